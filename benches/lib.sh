# Shared by the bench scripts (sourced; needs $DIR).

# `dd` of the same byte count as a run, with `oflag=direct` and with `conv=fdatasync`: the
# raw-disk baselines every figure is compared with.
dd_baseline() { # bytes
    local count=$(( $1 / 4194304 ))
    echo -n "dd oflag=direct, $count x 4 MiB: "
    dd if=/dev/zero of="$DIR/dd.bin" bs=4M count="$count" oflag=direct 2>&1 | tail -1
    rm -f "$DIR/dd.bin"
    echo -n "dd conv=fdatasync, $count x 4 MiB: "
    dd if=/dev/zero of="$DIR/dd.bin" bs=4M count="$count" conv=fdatasync 2>&1 | tail -1
    rm -f "$DIR/dd.bin"
}
