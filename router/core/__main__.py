"""`python -m mcpmux.router.core`: how supervisord starts a stack's core."""

from mcpmux.router.core.loop import main

main()
