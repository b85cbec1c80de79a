"""Storage formats: safetensors I/O and headers, adapter directories, base-model fingerprints, atomic output
directories. Imports nothing above it (no registry, no operations)."""
