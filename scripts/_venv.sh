# Sourced by scripts/serve, scripts/demo and scripts/test: make .venv exist and match pyproject.toml.
# CDS_VENV_EXTRAS names the optional dependency groups the caller needs (scripts/test: the test
# tools and the Dask and MLflow extras it tests; the server and the demo: none). Re-installs only
# when pyproject.toml changed or a group is missing, so the second run starts at once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
extras="${CDS_VENV_EXTRAS:-}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "cds needs Python 3.11 or newer (found: $("$py" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment in $venv" >&2
    "$py" -m venv "$venv"
fi
stamp="$venv/.installed"
want="$(sha256sum < "$root/pyproject.toml" | cut -d' ' -f1)"
read -r have_hash have_extras < "$stamp" 2>/dev/null || { have_hash=""; have_extras=""; }
needed=0
[ "$have_hash" = "$want" ] || needed=1
for group in ${extras//,/ }; do
    case ",${have_extras}," in *",$group,"*) ;; *) needed=1 ;; esac
done
if [ "$needed" = 1 ]; then
    # Keep the groups installed before (the demo after the tests keeps the test tools).
    [ "$have_hash" = "$want" ] && all="$(printf '%s\n' ${have_extras//,/ } ${extras//,/ } | sort -u | paste -sd, -)" || all="$extras"
    echo "installing dependencies${all:+ [$all]} (the first run takes a few minutes)" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -e "$root${all:+[$all]}" >&2
    echo "$want ${all:-}" > "$stamp"
fi
