"""What a plugin author tests with: tiny models built from configs (:mod:`adapterhub.testing.models`) and
the conformance suite every method plugin passes (:mod:`adapterhub.testing.conformance`). Both need
torch and transformers; the conformance suite also needs pytest (and peft for the parity checks)."""
