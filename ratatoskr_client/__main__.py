"""``python -m ratatoskr_client`` is the ``ratatoskr`` command."""

from .cli.main import main

raise SystemExit(main())
