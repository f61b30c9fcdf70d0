# StrokeCT AutoML dashboard in a container; also a Docker-SDK Hugging Face Space (README: `sdk: docker`, `app_port: 8501`).
#
#   docker build -t strokect .
#   docker run -p 8501:8501 -v strokect-data:/data strokect      # http://localhost:8501
#
# Studies and caches go to /data when it is a writable mount (a Space's persistent storage), else into the app
# folder; the first start builds the demo study there (tools/space_entry.py).
# Exact tag; to pin the digest too: docker buildx imagetools inspect python:3.11.14-slim-bookworm
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Spaces run the container as uid 1000; the same user locally keeps /data's files readable on both.
RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    GRADIO_ANALYTICS_ENABLED=False
WORKDIR /home/user/app

# torch and torchvision first, at the pinned versions, from the CPU-only index (a Space has no GPU: this keeps
# ~4 GB of CUDA libraries out of the image); TORCH_INDEX_URL= (empty) installs the CUDA build from PyPI instead.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --chown=user requirements.txt .
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --user --index-url "$TORCH_INDEX_URL" $(grep -E '^torch(vision)?==' requirements.txt); \
    fi \
 && pip install --user -r requirements.txt

COPY --chown=user . .

EXPOSE 8501
CMD ["python", "tools/space_entry.py"]
