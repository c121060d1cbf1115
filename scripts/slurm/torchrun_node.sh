#!/usr/bin/env bash
# Start nanochat on one node of a multi-node run without SLURM (run it on every node, same arguments):
#   MASTER_ADDR=node0 NNODES=2 NODE_RANK=0 bash scripts/slurm/torchrun_node.sh model.depth=20   # on node0
#   MASTER_ADDR=node0 NNODES=2 NODE_RANK=1 bash scripts/slurm/torchrun_node.sh model.depth=20   # on node1
# Lightning sees torchrun's variables (TorchElasticEnvironment) and joins the ranks; Hydra overrides follow.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}" "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}"
NPROC=${NPROC_PER_NODE:-$(nvidia-smi -L | wc -l)}
PROFILE=${PROFILE:-h100_multinode}
exec "${PYTHON:-.venv/bin/python}" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK" \
  --nproc-per-node "$NPROC" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}" \
  train.py hardware="$PROFILE" hardware.num_nodes="$NNODES" hardware.devices="$NPROC" \
  run_name="${RUN_NAME:-multinode}" "$@"
