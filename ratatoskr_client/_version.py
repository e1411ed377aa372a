"""The package version, defined once (read by hatchling and by ``ratatoskr --version``),
and how to install one of its extras."""

__version__ = "0.1.0"


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` (``.venv/bin/pip install -e ".[cluster]"``).

    The package is not on the package index yet, so the one install that works
    is the checkout's: every hint the package prints comes from here, and names
    the index form only once it is published.
    """
    return f'.venv/bin/pip install -e ".[{extra}]" (in the checkout)'
