#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit (nvcc, cicc, headers, cuBLAS, cuRAND, NVRTC) from
# NVIDIA's PyPI wheels, for building `starling` with `--features cuda` on a machine
# with no CUDA installed, then prints the environment to build with. The binary
# links libcuda.so.1 from the GPU driver at run time; this script makes a stub of
# it only for linking. Not part of CI.
#
#   bench/cuda_toolkit_from_pip.sh /opt/cuda13 && source /opt/cuda13/env.sh
#   cargo build --release -p starling-node --features cuda
set -euo pipefail
DEST=${1:?usage: $0 DEST}
mkdir -p "$DEST/whl" "$DEST/x"
(cd "$(dirname "$0")/.." && cargo fetch -q)  # cudarc's sources, for the stub below
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST/whl" \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-cccl==13.0.85" \
    "nvidia-cublas==13.0.*" "nvidia-curand"
for w in "$DEST"/whl/*.whl; do unzip -q -o "$w" -d "$DEST/x"; done
ROOT="$DEST/x/nvidia/cu13"
(cd "$ROOT/lib" && for l in libcublas libcublasLt libcudart libnvrtc; do ln -sf "$l.so.13" "$l.so"; done \
    && ln -sf libcurand.so.10 libcurand.so)
# A stub libcuda.so with every driver symbol cudarc declares, for the linker only.
mkdir -p "$ROOT/lib/stubs"
sys=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | head -1)
grep -ohE "^\s+(pub )?fn cu[A-Za-z0-9_]+\(" "$sys" | sed -E 's/.*fn (cu[A-Za-z0-9_]+)\(/void \1(void){}/' | sort -u \
    > "$DEST/cudastub.c"
gcc -shared -fPIC -o "$ROOT/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$DEST/cudastub.c"
cat > "$DEST/env.sh" <<ENV
export CUDA_ROOT=$ROOT
export CUDA_PATH=$ROOT
export PATH=$ROOT/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$ROOT/lib:$ROOT/lib/stubs
ENV
echo "source $DEST/env.sh, then: cargo build --release -p starling-node --features cuda"
