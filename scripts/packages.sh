# Sourced by scripts/test and scripts/bench: the Debian packages the
# workspace needs, and their installation (as root; otherwise the apt line
# is printed and the script stops).
#
# The system UCX that mfio-net binds (headers, libraries and ucx_perftest),
# clang for bindgen, pkg-config to find UCX. fio is the benchmark's
# reference row (the test's smoke run exercises its parsing). Open MPI
# (headers, library, mpicc and mpiexec) for mfio-coll's MPI backend and the
# multi-rank tests and examples.
PACKAGES=(fio libucx-dev ucx-utils libclang-dev clang pkg-config libopenmpi-dev openmpi-bin)

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    printf '\n==> installing system packages: %s\n' "${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || { echo "apt-get update failed" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" ||
      { echo "apt-get install ${missing[*]} failed" >&2; exit 1; }
  else
    printf 'Missing system packages. Install them with:\n  sudo apt-get install %s\n' "${missing[*]}" >&2
    exit 1
  fi
}
