# Shell functions the launch scripts share; each script sets PROG, then sources this file.

# Prints an error naming the script and how to get its usage, and exits with status 2.
die() {
  echo "$PROG: error: $*" >&2
  echo "Run '$PROG --help' for the usage." >&2
  exit 2
}

# Whether $1 is a positive integer written without leading zeros.
is_count() { case "$1" in '' | *[!0-9]* | 0*) return 1 ;; *) return 0 ;; esac; }
