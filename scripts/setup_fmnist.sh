#!/usr/bin/env bash
# Make the full Fashion-MNIST (Debian package dataset-fashion-mnist) available to the benchmark.
#   1. the IDX files are already in $VITQ_FMNIST_SYSTEM_DIR (default /usr/share/datasets/fashion-mnist): nothing to do;
#   2. else `apt-get install -y dataset-fashion-mnist` (through sudo when not root and sudo exists);
#   3. else `apt-get download` + `dpkg -x` into ${VITQ_CACHE_DIR:-<repo>/.cache}/fmnist-deb, where
#      vitq.data.fashion_mnist looks too (or point VITQ_FMNIST_DIR at the printed folder).
# Exits non-zero with a message when none of these works. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=dataset-fashion-mnist
SYSTEM_DIR=${VITQ_FMNIST_SYSTEM_DIR:-/usr/share/datasets/fashion-mnist}
CACHE=${VITQ_CACHE_DIR:-$PWD/.cache}
DEB_ROOT=$CACHE/fmnist-deb
EXTRACTED=$DEB_ROOT/usr/share/datasets/fashion-mnist
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

complete() {  # complete DIR: all four IDX files, plain or .gz
  local f
  for f in $FILES; do
    [ -f "$1/$f.gz" ] || [ -f "$1/$f" ] || return 1
  done
}

if complete "$SYSTEM_DIR"; then
  echo "Fashion-MNIST: found in $SYSTEM_DIR"
  exit 0
fi
if complete "$EXTRACTED"; then
  echo "Fashion-MNIST: found in $EXTRACTED (unpacked earlier)"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -n)
fi
apt_install() { "${SUDO[@]}" apt-get install -y -q "$PKG" >/dev/null 2>&1; }
apt_update() { "${SUDO[@]}" apt-get update -q >/dev/null 2>&1; }

if command -v apt-get >/dev/null 2>&1; then
  if apt_install || { apt_update && apt_install; }; then
    if complete "$SYSTEM_DIR"; then
      echo "Fashion-MNIST: installed $PKG into $SYSTEM_DIR"
      exit 0
    fi
    echo "note: $PKG installed but $SYSTEM_DIR lacks the IDX files; unpacking it into the cache instead" >&2
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # apt-get download needs no root; it writes the .deb into the current directory.
  if (cd "$tmp" && apt-get download -q "$PKG" >/dev/null 2>&1) \
    || { apt_update && (cd "$tmp" && apt-get download -q "$PKG" >/dev/null 2>&1); }; then
    deb=$(ls "$tmp"/${PKG}_*.deb 2>/dev/null | head -n 1 || true)
    if [ -n "$deb" ] && command -v dpkg >/dev/null 2>&1; then
      mkdir -p "$DEB_ROOT"
      dpkg -x "$deb" "$DEB_ROOT"
      if complete "$EXTRACTED"; then
        echo "Fashion-MNIST: unpacked $(basename "$deb") into $EXTRACTED"
        echo "  (vitq finds it there; elsewhere set VITQ_FMNIST_DIR=$EXTRACTED)"
        exit 0
      fi
      echo "error: unpacked $(basename "$deb") but $EXTRACTED lacks the IDX files ($FILES)" >&2
      exit 1
    fi
  fi
fi
echo "error: could not get Fashion-MNIST: $SYSTEM_DIR has no IDX files, \`apt-get install $PKG\` failed" \
  "(no root/sudo, or no Debian archive), and \`apt-get download $PKG\` + \`dpkg -x\` failed too." >&2
echo "Put train/t10k-{images-idx3,labels-idx1}-ubyte[.gz] in a folder and set VITQ_FMNIST_DIR to it." >&2
exit 1
