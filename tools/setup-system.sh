#!/usr/bin/env bash
# Install the Debian packages nvramfs needs, if any are missing.
#   fuse3          fusermount3 and mount.fuse3 (mounting)
#   libfuse3-dev   headers pyfuse3's Cython extension is compiled against
#   pkg-config     how pyfuse3's build finds libfuse3
#   fio            the workloads of `nvramfs demo` and tools/bench_fio.py
#   attr           getfattr, which the README's tour uses for the residency map
#   gcc, python3-dev, python3-venv: building pyfuse3, the virtualenv
set -euo pipefail
pkgs=(fuse3 libfuse3-dev pkg-config fio gcc attr)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-system: missing Debian packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup-system: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# /dev/fuse must exist for mounts; some minimal containers lack the node.
if [ ! -e /dev/fuse ] && [ "$(id -u)" -eq 0 ]; then
  mknod -m 666 /dev/fuse c 10 229 || true
fi
