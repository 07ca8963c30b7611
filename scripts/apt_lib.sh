# Sourced by setup.sh and setup_data.sh: who may run apt-get, and an install
# that refreshes the package lists once if the first attempt fails.
#   SUDO:        () as root, (sudo -n) with password-less sudo
#   CAN_INSTALL: 1 if apt-get may install packages, else 0

SUDO=()
CAN_INSTALL=1
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    CAN_INSTALL=0
  fi
fi

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@"; then
    echo "[apt] install failed; running apt-get update once and retrying"
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@"
  fi
}
