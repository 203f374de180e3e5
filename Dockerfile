# mcp-gate as a container: a slim Python, a user without privileges, the data directory a volume.
#   docker build -t mcp-gate .
#   docker run -v gate-data:/data -v ./deploy/gate.toml:/etc/mcp-gate/gate.toml:ro \
#     -p 8765:8765 -p 127.0.0.1:8766:8766 mcp-gate
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mcp_gate ./mcp_gate
# The gate, its PostgreSQL driver, and the time server the example gate.toml puts behind it.
RUN pip install ".[postgres]" mcp-server-time && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin gate \
    && mkdir -p /etc/mcp-gate/tool_manifests \
    && mcp-gate manifests copy time --to /etc/mcp-gate/tool_manifests \
    && mkdir -p /data /etc/mcp-gate \
    && chown gate:gate /data
COPY deploy/gate.toml /etc/mcp-gate/gate.toml

USER gate
WORKDIR /data
VOLUME ["/data"]
ENV MCP_GATE_CONFIG=/etc/mcp-gate/gate.toml

# 8765: agents (streamable HTTP, /mcp). 8766: the admin listener (approvers' API, /healthz,
# /readyz, /metrics).
EXPOSE 8765 8766

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8766/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["mcp-gate"]
CMD ["serve", "--http", "0.0.0.0:8765", "--admin", "0.0.0.0:8766", "--log-format", "json"]
