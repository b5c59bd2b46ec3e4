# syntax=docker/dockerfile:1
# ttt-serve container image: a Debian 12 build stage and a slim runtime stage holding only the
# shared libraries, the server (`ttt-serve`), the CLI (`ttt`) and the shipped model.
# Both stages install packages with deploy/install-deps.sh, the same script the README's set-up and
# CI run, so the image and the tested build cannot drift apart (no Docker engine runs in CI: the
# shared script, and tests/deploy/runtime_deps_test.sh, are what keep this file honest).
#
#   docker build -t ttt-serve:dev .                                  # CPU, Debian's LibTorch 1.13
#   docker build -t ttt-serve:dev-cuda --build-arg CUDA=12.6 .        # CUDA, PyTorch wheel's LibTorch
#   docker build -t ttt-serve:dev-cuda --build-arg CUDA=12.6 --build-arg TORCH_VERSION=2.7.1 .
#
# CUDA variant: CUDA=<major.minor> makes install-deps.sh add NVIDIA's Debian 12 CUDA toolkit
# (Torch's cmake config needs nvcc and the headers) and a CUDA PyTorch wheel in /opt/torch-venv;
# cmake finds LibTorch through the wheel's torch.utils.cmake_prefix_path. The runtime stage gets the
# wheel's libraries (torch/lib and the nvidia-* wheels, same paths, so the RPATHs hold); the CUDA
# driver comes from the node through the NVIDIA container toolkit. Run it with --gpus all and
# --device=cuda (the Helm chart does both when gpu.enabled).
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
ARG CUDA=""
ARG TORCH_VERSION=2.7.1
ENV TTT_CUDA=${CUDA} TTT_TORCH_VERSION=${TORCH_VERSION} TTT_TORCH_VENV=/opt/torch-venv
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN bash deploy/install-deps.sh build && rm -rf /var/lib/apt/lists/*
COPY . .
# Build only the two shipped binaries; tests and benchmarks run in CI, not in the image.
RUN set -eux; \
    prefix=""; \
    if [ -n "$TTT_CUDA" ]; then \
      prefix="$($TTT_TORCH_VENV/bin/python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"; \
    fi; \
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTTT_BUILD_TESTS=OFF -DTTT_BUILD_BENCH=OFF \
      ${prefix:+-DCMAKE_PREFIX_PATH=$prefix}; \
    cmake --build build --target ttt-serve ttt
# Stage what the runtime image needs under /staging so one COPY serves both variants.
RUN set -eux; \
    mkdir -p /staging/opt/ttt-serve/bin /staging/opt/ttt-serve/models; \
    cp "$(find build -type f -name ttt-serve -perm -u+x | head -n1)" /staging/opt/ttt-serve/bin/; \
    cp "$(find build -type f -name ttt -perm -u+x | head -n1)" /staging/opt/ttt-serve/bin/; \
    strip --strip-unneeded /staging/opt/ttt-serve/bin/*; \
    cp -a models/ttt-brown /staging/opt/ttt-serve/models/; \
    if [ -n "$TTT_CUDA" ]; then \
      site="$($TTT_TORCH_VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
      mkdir -p "/staging$site/torch" /staging/etc/ld.so.conf.d; \
      cp -a "$site/torch/lib" "/staging$site/torch/"; \
      cp -a "$site/nvidia" "/staging$site/"; \
      if [ -d "$site/torch.libs" ]; then cp -a "$site/torch.libs" "/staging$site/"; fi; \
      (echo "$site/torch/lib"; find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u) \
        > /staging/etc/ld.so.conf.d/ttt-serve-torch.conf; \
    fi

FROM ${DEBIAN_IMAGE} AS runtime
ARG CUDA=""
ENV TTT_CUDA=${CUDA}
COPY deploy/install-deps.sh /usr/local/sbin/ttt-install-deps
RUN bash /usr/local/sbin/ttt-install-deps runtime && rm -rf /var/lib/apt/lists/*
COPY --from=build /staging/ /
# Fail the build, not the first pod, if the runtime package list misses a library.
RUN ldconfig && ! ldd /opt/ttt-serve/bin/ttt-serve /opt/ttt-serve/bin/ttt | grep 'not found'
RUN groupadd --system --gid 10001 ttt \
 && useradd --system --uid 10001 --gid ttt --home-dir /var/lib/ttt-serve --shell /usr/sbin/nologin ttt \
 && mkdir -p /var/lib/ttt-serve/checkpoints \
 && chown -R ttt:ttt /var/lib/ttt-serve
ENV PATH=/opt/ttt-serve/bin:$PATH HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/lib/ttt-serve
VOLUME /var/lib/ttt-serve/checkpoints
# gRPC (--listen) and Prometheus /metrics (--metrics_listen); docs/contract.md.
EXPOSE 50051 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/ttt-serve/bin/ttt", "health", "--address=127.0.0.1:50051"]
ENTRYPOINT ["/opt/ttt-serve/bin/ttt-serve"]
CMD ["--model=/opt/ttt-serve/models/ttt-brown", "--checkpoint_dir=/var/lib/ttt-serve/checkpoints", \
     "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464"]
