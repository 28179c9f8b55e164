"""The embedded dev stack: emulator, PostgreSQL, RIE + awslambdaric and the dispatcher as host processes."""
