"""``python -m service``: the same as the ``actionq`` command."""

from service.cli.app import main

main()
