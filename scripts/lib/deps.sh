# Shared by scripts/*: install the Debian packages a step needs, only when
# missing (idempotent, quiet when everything is there).
# usage: need_packages pkg...
need_packages() {
    local missing=()
    local p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ -z "${CW_APT_UPDATED:-}" ]; then
        $sudo apt-get update -qq || true
        export CW_APT_UPDATED=1
    fi
    # nginx and tinyproxy (test peers) must not start as system services listening on every
    # interface: a policy-rc.d that says "no" keeps invoke-rc.d from starting them
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy" &&
            made_policy=1
    fi
    # another apt-get or dpkg on the machine may hold dpkg's lock: wait up to 10 minutes
    # for it rather than fail at once
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    local rc=$?
    [ -n "$made_policy" ] && $sudo rm -f "$policy"
    return $rc
}

# What building and testing cworker needs.
BUILD_PACKAGES=(build-essential meson ninja-build pkg-config libuv1-dev libmsgpack-dev libssl-dev
    libarchive-dev libcmocka-dev)
TEST_PACKAGES=(python3-pytest buildbot buildbot-worker procps openssl curl nginx-light tinyproxy systemd
    groff-base man-db)

# Configure (once) and build a tree: build_tree DIR [meson options...]
build_tree() {
    local dir=$1
    shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$@" >/dev/null
    fi
    ninja -C "$dir" >/dev/null
}
