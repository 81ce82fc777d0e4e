#!/bin/sh
# The layers' one-way rule: client -> shm; daemon -> shm, engine; engine -> kernels.
# A lower layer including an upper one fails this test and names the line.
root=${1:-.}
cd "$root" || exit 1
status=0
check() {
    dir=$1 bad=$2
    [ -d "$dir" ] || return 0
    hits=$(grep -rEn "#include[[:space:]]*[\"<](\.\./)*($bad)/" "$dir" --include='*.c' --include='*.h' --include='*.cu' 2>/dev/null)
    if [ -n "$hits" ]; then
        echo "layering: $dir/ must not include $bad:"
        echo "$hits"
        status=1
    fi
}
check shm 'daemon|engine|client|kernels'
check kernels 'daemon|engine|client|shm'
check engine 'daemon|client|shm'
check client 'daemon|engine|kernels'
[ $status -eq 0 ] && echo "layering: ok"
exit $status
