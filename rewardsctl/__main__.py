import sys


def main() -> int:
    print("rewardsctl: not yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
