"""The tiny models live in the installed package (``adapterhub.testing.models``) so plugin authors have
them too; this name stays for the tests that import it."""

from adapterhub.testing.models import *  # noqa: F401,F403
from adapterhub.testing.models import _seeded  # noqa: F401
