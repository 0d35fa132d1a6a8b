#!/usr/bin/env bash
# Set up Disco on a Debian machine (as root) and then either run the daemon or the tests.
#
#   ./setup.sh serve [disco serve options]   install what is missing, start dockerd + swarm, run the daemon
#   ./setup.sh test  [pytest options]        install what is missing, start dockerd + swarm, mypy, run every test
#   ./setup.sh docker                        start dockerd + swarm if they are not running (after a stop)
#   ./setup.sh join MANAGER:PORT TOKEN [ADDRESS] [--registry HOST:PORT CERTIFICATE]
#                                            on another machine: install Docker, start it, trust the daemon's
#                                            registry (its certificate, base64 DER), join the swarm as a worker
#                                            advertising ADDRESS (default: this machine's address toward the
#                                            manager); `disco nodes:add` prints this line with the token
#
# Every step checks before it acts, so running it again changes nothing that is already right.
set -euo pipefail

# ${BASH_SOURCE[0]} is unset when the script comes on stdin (`disco nodes:add --ssh` sends it so).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
VENV="$ROOT/.venv"
# docker-registry: the image registry the daemon runs once the swarm has a second node; iproute2:
# `ip xfrm`, with which the daemon asks the kernel whether overlay traffic can be encrypted.
DEBIAN_PACKAGES=(docker.io git openssh-client busybox-static caddy docker-registry iproute2 python3 python3-venv
    ca-certificates)
# Only for the tests: an RFC 8555 test CA, so HTTPS is proven against a real ACME server;
# Debian's chromium, which Playwright drives headless to test the dashboard in a real browser; and
# iproute2, whose `ip netns` and veth pairs make the multi-node tests' network (tests/multinode.py).
TEST_PACKAGES=(pebble chromium iproute2)
# What a machine joining the swarm needs: Docker, `ip` to find its own address, and the static
# busybox every task's health check runs with (mounted from the node's own /bin/busybox).
JOIN_PACKAGES=(docker.io iproute2 ca-certificates busybox-static)
# Debian's client: /usr/local/bin/docker may be a newer client-only build without BuildKit support.
DOCKER=/usr/bin/docker
DOCKERD_LOG=/var/log/disco-dockerd.log

say() { printf '==> %s\n' "$*" >&2; }

install_debian_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if ((${#missing[@]})); then
        say "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        # NEEDRESTART_MODE=l: needrestart would otherwise restart services, the running dockerd among them.
        NEEDRESTART_MODE=l DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Debian's docker-registry package starts a plain-HTTP registry of its own on :5000 under
    # systemd; Disco only wants its binary (the daemon runs its registry as a swarm service).
    if [[ " $* " == *" docker-registry "* ]] && command -v systemctl >/dev/null \
        && systemctl is-enabled docker-registry >/dev/null 2>&1; then
        systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
}

install_python_env() {
    # Reinstall only when pyproject.toml changed since the last install.
    local stamp="$VENV/.installed-from" wanted
    wanted="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating $VENV"
        python3 -m venv "$VENV"
    fi
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
        say "installing the disco package and its dependencies"
        "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]"
        echo "$wanted" >"$stamp"
    fi
}

start_dockerd() {
    if "$DOCKER" info >/dev/null 2>&1; then
        return
    fi
    say "starting dockerd (log: $DOCKERD_LOG)"
    # No systemd on these machines: run it detached so it outlives this script, from a subshell
    # that exits at once, so init adopts it. Otherwise `exec pytest` below would become its
    # parent, never reap it, and a stopped dockerd would linger as a zombie.
    (setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &)
    for _ in $(seq 1 120); do
        "$DOCKER" info >/dev/null 2>&1 && return
        sleep 0.5
    done
    say "dockerd did not come up within 60 s; last lines of $DOCKERD_LOG:"
    tail -n 20 "$DOCKERD_LOG" >&2
    exit 1
}

start_swarm() {
    local state
    for _ in $(seq 1 60); do  # a dockerd just started may still be rejoining its swarm
        state="$("$DOCKER" info --format '{{.Swarm.LocalNodeState}}')"
        [[ "$state" == "pending" ]] || break
        sleep 0.5
    done
    if [[ "$state" != "active" ]]; then
        say "initialising a single-node swarm"
        "$DOCKER" swarm init --advertise-addr 127.0.0.1 >/dev/null
    fi
}

# Trust the registry at $1 (HOST:PORT) with the certificate $2 (base64 of its DER), as every
# Docker engine finds it: /etc/docker/certs.d/HOST:PORT/ca.crt.
trust_registry() {
    local address="$1" certificate="$2" folder="/etc/docker/certs.d/$1"
    [[ "$address" =~ ^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):[0-9]+$ ]] || { say "the registry's address is not HOST:PORT: $address"; exit 2; }
    [[ "$certificate" =~ ^[A-Za-z0-9+/=]+$ ]] || { say "the registry's certificate is not base64: $certificate"; exit 2; }
    mkdir -p "$folder"
    { echo "-----BEGIN CERTIFICATE-----"; fold -w 64 <<<"$certificate"; echo "-----END CERTIFICATE-----"; } \
        >"$folder/ca.crt.partial"
    mv "$folder/ca.crt.partial" "$folder/ca.crt"
    say "trusting the registry at $address"
}

# Join the swarm whose manager is at $1 (ADDRESS:PORT) with the token $2, advertising $3 or this
# machine's address on its route to the manager (the one the manager's packets come back to).
join_swarm() {
    local manager="$1" token="$2" address="${3:-}" host state managers
    for _ in $(seq 1 60); do  # a dockerd just started may still be rejoining its swarm
        state="$("$DOCKER" info --format '{{.Swarm.LocalNodeState}}')"
        [[ "$state" == "pending" ]] || break
        sleep 0.5
    done
    if [[ "$state" == "active" ]]; then
        managers="$("$DOCKER" info --format '{{range .Swarm.RemoteManagers}}{{.Addr}} {{end}}')"
        if [[ " $managers" == *" $manager "* ]]; then
            say "already a node of the swarm at $manager: nothing to do (if \`disco nodes\` does not list it, it was removed: run \`docker swarm leave\` here, then this again)"
            return
        fi
        say "this machine is in another swarm (managers: ${managers% }): leave it first with \`docker swarm leave\`"
        exit 1
    fi
    if [[ -z "$address" ]]; then
        host="${manager%:*}"; host="${host#[}"; host="${host%]}"
        address="$(ip -o route get "$host" 2>/dev/null | sed -n 's/.* src \([^ ]*\).*/\1/p')" || true
        [[ -n "$address" ]] || { say "no route to the manager at $host from here"; exit 1; }
    fi
    say "joining the swarm at $manager as $address"
    "$DOCKER" swarm join --advertise-addr "$address" --token "$token" "$manager" >/dev/null
    say "joined: \`disco nodes\` on the server lists this machine"
}

# Where no registry can be reached, build a Caddy image from Debian's caddy binary (dynamically
# linked: its libraries come along) and point the daemon at it.
LOCAL_CADDY_IMAGE=disco-caddy:debian
ensure_caddy_image() {
    if [[ -n "${DISCO_CADDY_IMAGE:-}" ]]; then
        return
    fi
    if "$DOCKER" image inspect caddy:2 >/dev/null 2>&1 || timeout 60 "$DOCKER" pull -q caddy:2 >/dev/null 2>&1; then
        export DISCO_CADDY_IMAGE=caddy:2
        return
    fi
    export DISCO_CADDY_IMAGE="$LOCAL_CADDY_IMAGE"
    image_from_debian_binary "$LOCAL_CADDY_IMAGE" caddy caddy 'ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data' \
        'CMD ["caddy", "run"]'
}

# The images of the daemon's own registry (hooks/registry.py), from Debian's docker-registry, and
# of the job that prunes images on the other nodes, from Debian's docker client.
ensure_registry_images() {
    image_from_debian_binary disco-registry:debian docker-registry docker-registry \
        'CMD ["docker-registry", "serve", "/etc/docker/registry/config.yml"]'
    image_from_debian_binary disco-docker-cli:debian docker.io docker 'CMD ["docker", "version"]'
}

# IMAGE from the binary /usr/bin/BINARY of the Debian package PACKAGE (dynamically linked: its
# libraries come along) and the host's CA certificates; the rest of the arguments are Dockerfile
# lines. Built again only when the package's version changed.
image_from_debian_binary() {
    local image="$1" package="$2" binary="$3" version context library
    shift 3
    version="$(dpkg-query -W -f='${Version}' "$package")"
    if [[ "$("$DOCKER" image inspect -f '{{index .Config.Labels "disco.package-version"}}' "$image" 2>/dev/null)" == "$version" ]]; then
        return
    fi
    say "building $image from Debian's $package $version"
    context="$(mktemp -d)"
    mkdir -p "$context/rootfs/usr/bin" "$context/rootfs/etc/ssl/certs" "$context/rootfs/tmp"
    cp "/usr/bin/$binary" "$context/rootfs/usr/bin/$binary"
    cp /etc/ssl/certs/ca-certificates.crt "$context/rootfs/etc/ssl/certs/"
    for library in $(ldd "/usr/bin/$binary" | grep -o '/[^ ]*'); do
        mkdir -p "$context/rootfs$(dirname "$library")"
        cp -L "$library" "$context/rootfs$library"
    done
    printf '%s\n' 'FROM scratch' 'COPY rootfs/ /' 'ENV PATH=/usr/bin' "LABEL disco.package-version=\"$version\"" \
        "$@" >"$context/Dockerfile"
    DOCKER_BUILDKIT=1 "$DOCKER" build -q -t "$image" "$context" >/dev/null
    rm -rf "$context"
}

setup() {
    if [[ $EUID -ne 0 ]]; then
        echo "setup.sh must run as root (it installs packages and starts dockerd)" >&2
        exit 1
    fi
    install_debian_packages "${DEBIAN_PACKAGES[@]}" "$@"
    install_python_env
    start_dockerd
    start_swarm
    ensure_caddy_image
    ensure_registry_images
}

case "${1:-}" in
serve)
    shift
    setup
    export PATH="/usr/bin:$PATH"
    exec "$VENV/bin/disco" serve "$@"
    ;;
test)
    shift
    setup "${TEST_PACKAGES[@]}"
    export PATH="/usr/bin:$PATH"
    cd "$ROOT"
    say "type-checking with mypy"
    "$VENV/bin/mypy"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
docker)
    [[ $EUID -eq 0 ]] || { echo "setup.sh must run as root (it starts dockerd)" >&2; exit 1; }
    start_dockerd
    start_swarm
    ;;
join)
    shift
    [[ $EUID -eq 0 ]] || { echo "setup.sh must run as root (it installs Docker and starts it)" >&2; exit 1; }
    join_args=()
    while (($#)); do
        if [[ "$1" == "--registry" ]]; then
            [[ $# -ge 3 ]] || { echo "usage: $0 join MANAGER:PORT TOKEN [ADDRESS] [--registry HOST:PORT CERTIFICATE]" >&2; exit 2; }
            registry_address="$2" registry_certificate="$3"
            shift 3
        else
            join_args+=("$1")
            shift
        fi
    done
    [[ ${#join_args[@]} -ge 2 && ${#join_args[@]} -le 3 ]] || { echo "usage: $0 join MANAGER:PORT TOKEN [ADDRESS] [--registry HOST:PORT CERTIFICATE]" >&2; exit 2; }
    install_debian_packages "${JOIN_PACKAGES[@]}"
    if [[ -n "${registry_address:-}" ]]; then
        trust_registry "$registry_address" "$registry_certificate"  # also on a node that joined already
    fi
    start_dockerd
    join_swarm "${join_args[@]}"
    ;;
*)
    echo "usage: $0 serve [disco serve options] | test [pytest options] | docker | join MANAGER:PORT TOKEN [ADDRESS] [--registry HOST:PORT CERTIFICATE]" >&2
    exit 2
    ;;
esac
