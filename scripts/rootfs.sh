#!/bin/sh
# Assembles the root filesystem of Cairn's container image, which starts FROM
# scratch: no shell, no package manager, only what the binary needs.
#
#   scripts/rootfs.sh <cairn binary> <output directory>
#
# Writes into the output directory:
#   usr/local/bin/cairn                 the binary
#   lib*/…, usr/lib/…                   every shared library `ldd` lists, and the
#                                       dynamic loader, at the paths it names
#   etc/passwd, etc/group               the user and group cairn (10001), no login
#   etc/ssl/certs/ca-certificates.crt   CA roots for HTTPS object stores (if present)
#   etc/nsswitch.conf                   host lookups from files, then DNS
#   var/lib/cairn                       the data directory (the image's volume)
#   tmp                                 mode 1777
#
# The Dockerfile's build stage runs it on the release binary; the container
# test (tests/api/container.rs) runs it on the binary cargo built, then builds
# the Dockerfile's final stage from the result, so both ship the same layout.
# Ownership is not set here: the Dockerfile's COPY --chown gives the data
# directory to 10001 (COPY makes everything else root's).
set -eu

if [ $# -ne 2 ]; then
  echo "usage: $0 <cairn binary> <output directory>" >&2
  exit 2
fi
bin=$1
out=$2
uid=10001

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/var/lib/cairn" "$out/tmp"
chmod 1777 "$out/tmp"
chmod 0755 "$out/var/lib/cairn"
cp "$bin" "$out/usr/local/bin/cairn"
chmod 0755 "$out/usr/local/bin/cairn"

# Shared libraries and the loader: ldd prints "name => /path (addr)" for
# libraries and "/path (addr)" for the loader; vDSO lines have no path.
ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u |
  while read -r lib; do
    dir=$(dirname "$lib")
    mkdir -p "$out$dir"
    cp -L "$lib" "$out$lib"
  done

cat > "$out/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
cairn:x:$uid:$uid:Cairn registry:/var/lib/cairn:/sbin/nologin
EOF
cat > "$out/etc/group" <<EOF
root:x:0:
cairn:x:$uid:
EOF
echo 'hosts: files dns' > "$out/etc/nsswitch.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
fi
