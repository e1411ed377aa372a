"""``python -m ratatoskr_client`` is the ``ratatoskr`` command."""

from .cli import main

raise SystemExit(main())
