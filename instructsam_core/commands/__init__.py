"""One module per `instructsam` subcommand; each exposes `register(subparsers)`."""
