# Sourced by the sanitizer scripts: copy the working tree's files (tracked,
# and untracked ones git does not ignore; no build outputs) into a temporary
# directory, make a virtual environment there and install cbn with the test
# extras, built with the CFLAGS/LDFLAGS given as $1 and $2. The working tree
# and its own build are left alone. Leaves the shell in that directory with
# the environment active; the directory is removed on exit.
sandbox_install() {
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    sandbox=$(mktemp -d)
    trap 'rm -rf "$sandbox"' EXIT
    git -C "$root" ls-files -z --cached --others --exclude-standard \
        | (cd "$root" && xargs -0 tar cf -) | tar xf - -C "$sandbox"
    python3 -m venv "$sandbox/venv"
    # shellcheck disable=SC1091
    . "$sandbox/venv/bin/activate"
    python -m pip install --quiet --upgrade pip
    cd "$sandbox"
    CFLAGS="$1" LDFLAGS="$2" python -m pip install --quiet -e ".[test,bfloat16]"
}

# pytest's exit code, with "no tests collected" (5) as a failure
pytest_status() {
    if [ "$1" -eq 5 ]; then
        echo "pytest collected no tests" >&2
        return 1
    fi
    return "$1"
}
