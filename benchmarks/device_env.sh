# Sourced at the start of every device call: install carried wheels, make ../shared resolve to the
# carried copy (the device receives only the repository), print the versions every result is tied to.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -e ../shared ] || ln -s "$PWD/.devshared" ../shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, torchao, triton; print('torch', torch.__version__, 'torchao', torchao.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
