"""``python -m service``: the same as the ``actionq`` command."""

from service.cli import main

main()
