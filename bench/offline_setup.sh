# Run edgeshard (and the benchmarks) from this source tree on a machine without a package
# index: no pip install of the project, no network.
#
#   source bench/offline_setup.sh WHEELDIR [SITE]     # sets PYTHONPATH in this shell
#   eval "$(bash bench/offline_setup.sh WHEELDIR)"    # same; the script prints the export line
#
# Needs: python3 (the one the benchmarks will run with) with numpy, Cython, setuptools and a
# C compiler. WHEELDIR: wheels for that python and platform of ai-edge-litert, grpcio,
# protobuf, grpcio-health-checking, grpcio-reflection, zeroconf, ifaddr, msgpack,
# typing_extensions, and Cython 3.3.1 (the build pin; it then shadows python3's own)
# (pip download --no-deps --only-binary=:all: --python-version X.Y --platform ...).
#
# 1. unpacks the wheels (pip --no-index --no-deps, or plain unzip when python3 has no pip)
#    into SITE (default /tmp/edgeshard-site); SITE comes first on PYTHONPATH, so these
#    copies win over older ones in python3's own site-packages;
# 2. links SITE/edgeshard_models -> models/ (the package_dir mapping of setup.py);
# 3. builds the Cython kernels in place (ext/_*.so; log in SITE/build_ext.log) and fails
#    unless ext.IMPLEMENTATION is "cython".
# The launcher starts daemons as `python -m edge_node` / `python -m coordinator` with this
# environment, so no console script is needed: `edge-node ARGS` is `python3 -m edge_node
# ARGS`, `edge-coordinator ARGS` is `python3 -m coordinator ARGS`.
# The progress goes to stderr; the export line to stdout.

_edgeshard_offline_setup() {
    local wheels=${1:?usage: source bench/offline_setup.sh WHEELDIR [SITE]}
    local site=${2:-/tmp/edgeshard-site} root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return
    wheels=$(cd "$wheels" && pwd) || return
    (
        set -euo pipefail
        cd "$root"
        mkdir -p "$site"
        if python3 -m pip --version >/dev/null 2>&1; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --disable-pip-version-check --upgrade --target "$site" "$wheels"/*.whl
        else  # a wheel is a zip laid out for site-packages
            for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$site"; done
        fi
        ln -sfn "$root/models" "$site/edgeshard_models"
        export PYTHONPATH="$site:$root"
        python3 setup.py build_ext --inplace >"$site/build_ext.log" 2>&1 \
            || { tail -n 30 "$site/build_ext.log"; echo "build_ext failed" >&2; exit 1; }
        python3 - <<'EOF'
import sys, grpc, google.protobuf, numpy, ai_edge_litert, zeroconf, msgpack, ext, edgeshard_models
import edge_node.__main__, coordinator.cli
print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, grpcio {grpc.__version__} "
      f"({grpc.__file__}), protobuf {google.protobuf.__version__}, ext {ext.IMPLEMENTATION}")
sys.exit(ext.IMPLEMENTATION != "cython")
EOF
    ) >&2 || { echo "offline_setup: failed" >&2; return 1; }
    echo "export PYTHONPATH=$site:$root${PYTHONPATH:+:$PYTHONPATH}"
}

if (return 0 2>/dev/null); then  # sourced: apply it to this shell
    if _edgeshard_env=$(_edgeshard_offline_setup "$@"); then
        eval "$_edgeshard_env" && echo "$_edgeshard_env" >&2
        unset -f _edgeshard_offline_setup; unset _edgeshard_env
    else
        unset -f _edgeshard_offline_setup; unset _edgeshard_env
        return 1
    fi
else
    _edgeshard_offline_setup "$@"
fi
