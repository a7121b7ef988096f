# Shared by benches/e2e/run.sh and benches/e2e/icount.sh (sourced).

# The address an `e2e_server` writing its output to file $1 listens on,
# once it says so (`listening on ADDR`); waits up to 30 s. Prints the
# server's output and fails if it never does.
listening_on() {
    local out=$1 addr=""
    for _ in $(seq 300); do
        addr=$(sed -n 's/^listening on //p' "$out" 2>/dev/null)
        [ -n "$addr" ] && { echo "$addr"; return 0; }
        sleep 0.1
    done
    echo "e2e: the server did not start:" >&2
    cat "$out" >&2
    return 1
}
