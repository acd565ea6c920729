#!/bin/bash
# Build the bids_muscle image, tagged bids_muscle:<package version> and :latest
# ("make image" runs this from the repository root). Settings, from the
# environment:
#   BASE          Python base image (python:3.12-slim). When it is neither
#                 present nor pullable, a base made from Debian packages is used
#                 instead (DEBIAN_BASE, bids_muscle-base:bookworm, built once by
#                 docker/debian-base.sh and kept as a local image).
#   TORCH_WHEELS  folder with a CPU torch wheel for the base's Python. Empty:
#                 the folders of pip's "find-links" setting on this machine are
#                 searched; no wheel found: PyTorch's CPU index (TORCH_INDEX).
#   CA_BUNDLE     CA certificates for pip inside the build, passed as a build
#                 secret, never stored in the image (default: pip's "cert"
#                 setting, else /etc/ssl/certs/ca-certificates.crt if present).
#   IMAGE         repository name of the image (bids_muscle); DOCKER the client.
set -euo pipefail
cd "$(dirname "$0")/.."

# a pip setting of this machine (empty when unset or when no pip runs)
pip_setting() {
    local python
    for python in python3 .venv/bin/python; do
        "$python" -m pip config get "$1" 2>/dev/null && return 0
    done
    return 0
}

image=${IMAGE:-bids_muscle}
base=${BASE:-python:3.12-slim}
debian_base=${DEBIAN_BASE:-bids_muscle-base:bookworm}
torch_version=$(sed -n 's/^torch==//p' docker/constraints.txt)
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)
[[ -n $version && -n $torch_version ]] || { echo "docker/constraints.txt/pyproject.toml: cannot read the torch pin or the package version" >&2; exit 2; }

# A client that builds with BuildKit: "docker buildx" where the plugin is
# installed, else a client older than 23 (its BuildKit is built in), looked
# for among the docker executables on PATH.
build=()
for client in ${DOCKER:-} $(type -ap docker); do
    if "$client" buildx version >/dev/null 2>&1; then
        build=("$client" buildx build --load)
        break
    fi
    major=$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [[ $major =~ ^[0-9]+$ ]] && (( major < 23 )); then
        build=(env DOCKER_BUILDKIT=1 "$client" build)
        break
    fi
done
if (( ${#build[@]} == 0 )); then
    echo "no docker client with BuildKit found: install the buildx plugin (docker-buildx)" >&2
    exit 2
fi
docker=${build[0]}
[[ $docker == env ]] && docker=${build[2]}
"$docker" info >/dev/null 2>&1 || { echo "docker: the daemon does not answer (start dockerd)" >&2; exit 2; }

if "$docker" image inspect "$base" >/dev/null 2>&1 || timeout 300 "$docker" pull -q "$base" >/dev/null 2>&1; then
    echo "base image: $base"
else
    echo "base image $base cannot be pulled; using $debian_base (made from Debian packages)"
    DOCKER=$docker docker/debian-base.sh "$debian_base"
    base=$debian_base
fi
pytag=$("$docker" run --rm --network none --entrypoint python3 "$base" -c \
    'import sys; print("cp%d%d" % sys.version_info[:2])')

# torch from a local wheel folder: the wheel is linked into docker/wheels/
# (part of the build context) for the build only
staged=()
cleanup() { ((${#staged[@]})) && rm -f "${staged[@]}"; return 0; }
trap cleanup EXIT
wheel_dirs=()
if [[ -n ${TORCH_WHEELS:-} ]]; then
    [[ -d $TORCH_WHEELS ]] || { echo "TORCH_WHEELS=$TORCH_WHEELS: not a folder" >&2; exit 2; }
    wheel_dirs=("$TORCH_WHEELS")
else
    read -ra wheel_dirs <<<"$(pip_setting global.find-links) ${PIP_FIND_LINKS:-}"
fi
wheel=""
for dir in "${wheel_dirs[@]}"; do
    dir=${dir#file://}
    [[ -d $dir ]] || continue
    wheel=$(find "$dir" -maxdepth 1 -name "torch-${torch_version}*-${pytag}-${pytag}-*linux*_x86_64.whl" | sort | tail -1)
    [[ -n $wheel ]] && break
done
if [[ -n $wheel ]]; then
    target="docker/wheels/$(basename "$wheel")"
    ln -f "$wheel" "$target" 2>/dev/null || cp "$wheel" "$target"
    staged+=("$target")
    echo "torch: $wheel"
elif [[ -n ${TORCH_WHEELS:-} ]]; then
    echo "TORCH_WHEELS=$TORCH_WHEELS: no torch-${torch_version} wheel for ${pytag} (linux x86_64)" >&2
    exit 2
else
    echo "torch: ${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
fi

secret=()
ca=${CA_BUNDLE:-}
if [[ -z $ca ]]; then
    ca=${PIP_CERT:-$(pip_setting global.cert)}
    [[ -f $ca ]] || ca=/etc/ssl/certs/ca-certificates.crt
fi
if [[ -f $ca ]]; then
    secret=(--secret "id=ca_bundle,src=$ca")
    echo "CA bundle (build secret): $ca"
elif [[ -n ${CA_BUNDLE:-} ]]; then
    echo "CA_BUNDLE=$CA_BUNDLE: file not found" >&2
    exit 2
fi

args=(--build-arg "BASE=$base" --build-arg "VERSION=$version")
[[ -n ${TORCH_INDEX:-} ]] && args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
start=$(date +%s)
"${build[@]}" "${args[@]}" "${secret[@]}" -t "$image:$version" -t "$image:latest" .
echo "built $image:$version (and :latest) from $base in $(( $(date +%s) - start )) s;" \
     "size $("$docker" image inspect --format '{{.Size}}' "$image:$version" | awk '{ printf "%.2f GB", $1 / 1e9 }')"
