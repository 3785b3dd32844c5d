"""``python -m codat_frames``: the codat-frames command."""

from codat_frames.cli import main

raise SystemExit(main())
