#!/bin/sh
# The layers of vmsup's source tree, checked: every #include "DIR/..." in a folder must
# point into the folder itself or into one the matrix below allows. A lower layer never
# includes a higher one, and folders on one floor do not include each other
# (docs/architecture.md). Run by `make check`; prints each include that breaks the rule.
#
# floor  folder      may include (besides itself)
matrix='
1 common
2 crypto      common
2 qmp         common
2 seccomp     common
2 nova        common
3 secrets     common crypto nova
3 tpmstate    common crypto
4 migrate     common crypto qmp seccomp nova secrets tpmstate
5 supervisor  common crypto qmp seccomp nova secrets tpmstate migrate
6 cli         common crypto qmp seccomp nova secrets tpmstate migrate supervisor
'
set -eu
top=${srcdir:-.}
bad=0
checked=0

allowed() { # folder target
        printf '%s\n' "$matrix" | awk -v f="$1" -v t="$2" '
                $2 == f { for (i = 3; i <= NF; i++) if ($i == t) ok = 1 }
                END { exit ok ? 0 : 1 }'
}

# the matrix itself: a folder names only folders on lower floors
printf '%s\n' "$matrix" | awk '
        NF { floor[$2] = $1; n++; line[n] = $0 }
        END {
                for (k = 1; k <= n; k++) {
                        split(line[k], w)
                        for (i = 3; i in w; i++)
                                if (!(w[i] in floor) || floor[w[i]] >= w[1]) {
                                        printf "layers: the matrix lets %s/ (floor %s) include %s/, which is not on a lower floor\n", w[2], w[1], w[i]
                                        bad = 1
                                }
                }
                exit bad
        }' || bad=1

for dir in $(printf '%s\n' "$matrix" | awk 'NF { print $2 }'); do
        [ -d "$top/$dir" ] || { echo "layers: the matrix names '$dir', which is not a folder"; bad=1; continue; }
        for f in "$top/$dir"/*.c "$top/$dir"/*.h; do
                [ -e "$f" ] || continue
                checked=$((checked + 1))
                # "../x.h" would step around the rule: refused as such
                grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" | while IFS= read -r line; do
                        inc=$(printf '%s' "$line" | sed 's/^[^"]*"\([^"]*\)".*/\1/')
                        case $inc in
                        config.h) continue ;;
                        ../* | */../*) echo "${f#$top/}:${line%%:*}: \"$inc\": a relative path out of the folder" ;;
                        */*)
                                target=${inc%%/*}
                                [ "$target" = "$dir" ] && continue
                                allowed "$dir" "$target" ||
                                        echo "${f#$top/}:${line%%:*}: \"$inc\": $dir/ may not include $target/"
                                ;;
                        *) echo "${f#$top/}:${line%%:*}: \"$inc\": name the folder (\"$dir/$inc\")" ;;
                        esac
                done
        done
done >"${TMPDIR:-/tmp}/layers.$$"
if [ -s "${TMPDIR:-/tmp}/layers.$$" ]; then
        cat "${TMPDIR:-/tmp}/layers.$$"
        bad=1
fi
rm -f "${TMPDIR:-/tmp}/layers.$$"
# every folder with C sources is in the matrix (a new folder gets its place)
for d in "$top"/*/; do
        d=$(basename "$d")
        case $d in tests | bench | build-aux | m4 | docs | autom4te.cache | .* ) continue ;; esac
        ls "$top/$d"/*.c >/dev/null 2>&1 || continue
        printf '%s\n' "$matrix" | awk -v d="$d" '$2 == d { f = 1 } END { exit f ? 0 : 1 }' ||
                { echo "layers: $d/ holds C sources but has no place in the matrix of tests/layers.sh"; bad=1; }
done
[ $bad -eq 0 ] && echo "layers: $checked files, every include within the matrix"
exit $bad
