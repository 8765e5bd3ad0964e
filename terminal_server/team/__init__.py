"""Team mode: what a server shared by several Unix users needs beyond one owner's token."""
