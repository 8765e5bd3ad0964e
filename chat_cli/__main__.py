import sys


def main() -> int:
    print("chat_cli: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
