#!/usr/bin/env bash
# The monthly restore drill (docs/restore-drill.md): a restore is only real if
# it was tested. Proves, with the restore side's keys, that every archive
# object opens and that the newest point restores into a scratch schema whose
# rows read back with matching checksums. Exit code: changevault's (0 = ok).
#
#   restore-drill.sh CONFIG TARGET_DSN PRIVATE_KEY [TIME]
set -euo pipefail
config=${1:?usage: restore-drill.sh CONFIG TARGET_DSN PRIVATE_KEY [TIME]}
target=${2:?usage: restore-drill.sh CONFIG TARGET_DSN PRIVATE_KEY [TIME]}
key=${3:?usage: restore-drill.sh CONFIG TARGET_DSN PRIVATE_KEY [TIME]}
when=${4:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
schema="changevault_drill_$(date -u +%Y%m%d%H%M%S)"

echo "drill: verify --decrypt (signatures, chain, digests, every object opened)"
changevault verify -c "$config" --decrypt --private-key "$key"

echo "drill: restore --to $when into scratch schema $schema"
changevault restore -c "$config" --to "$when" --target-dsn "$target" \
    --target-schema "$schema" --private-key "$key"

echo "drill: ok; inspect $schema, then drop it (DROP SCHEMA $schema CASCADE)"
