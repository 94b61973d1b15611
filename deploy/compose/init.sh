#!/usr/bin/env bash
# Generates the secrets of the four-validator compose network (deploy/compose.yaml):
#
#     STATE/genesis.json                      public; every validator mounts it read-only
#     STATE/validator-N/secrets/              mounted read-only into validator-N only:
#         validator-N.json                    the validator's key (mode 0600)
#         <firm>.json                         the key of the firm that runs validator-N,
#                                             for custodial signing on its own node only
#         tokens.json                         that node's API tokens (hashed)
#         pgpass                              its PostgreSQL password (libpq format)
#     STATE/validator-N/postgres-password     the same password for postgres-N
#     STATE/validator-N/data/                 the node's data directory (safety record)
#     STATE/offline/                          keep offline: the auditor's key and every
#                                             token secret (shown once, stored nowhere else)
#
# Usage: deploy/compose/init.sh [STATE]   (default deploy/compose/state, what compose.yaml
# mounts). Needs `coopledger` on PATH, e.g. PATH="$PWD/.venv/bin:$PATH". Run it as the user
# the containers run as (see compose.yaml). Nothing it writes ever goes into the image.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${1:-$here/state}"
chain_id="${COOPLEDGER_CHAIN_ID:-coop-compose-1}"
peer_port=26600

command -v coopledger >/dev/null || { echo "init.sh: coopledger is not on PATH" >&2; exit 1; }
if [ -e "$state/genesis.json" ]; then
    echo "init.sh: $state already holds a network; move it away to start a new one" >&2
    exit 1
fi
umask 077
mkdir -p "$state/offline"

# One firm runs each validator; the auditor runs no node.
firms=(alpine-cheese valley-bakery bean-and-leaf dairy-direct)
roles=(member member member supplier)
names=("Alpine Cheese Cooperative" "Valley Bakery" "Bean & Leaf Coffee" "Dairy Direct Supply")

validator_args=()
member_args=()
for n in 0 1 2 3; do
    validator="validator-$n"
    firm="${firms[$n]}"
    secrets="$state/$validator/secrets"
    mkdir -p "$secrets" "$state/$validator/data"
    coopledger keygen --id "$validator" --out "$secrets/$validator.json"
    coopledger keygen --id "$firm" --out "$secrets/$firm.json"
    validator_args+=(--validator "$secrets/$validator.json=$validator:$peer_port")
    member_args+=(--member "$secrets/$firm.json=${roles[$n]}=${names[$n]}")
done
coopledger keygen --id origin-audit --out "$state/offline/origin-audit.json"
member_args+=(--member "$state/offline/origin-audit.json=auditor=Origin Audit Services")

coopledger genesis create --chain-id "$chain_id" --genesis-time-ms "$(date +%s)000" \
    --out "$state/genesis.json" "${validator_args[@]}" "${member_args[@]}"
chmod 0644 "$state/genesis.json"

# `token add` prints the secret alone on its last line, once; only its hash is stored.
issue() {
    local tokens_file="$1" who="$2"
    shift 2
    local secret
    secret="$(coopledger token add --tokens-file "$tokens_file" "$@" | tail -n 1)"
    printf '%s\t%s\t%s\n' "$(basename "$(dirname "$(dirname "$tokens_file")")")" "$who" \
        "$secret" >>"$state/offline/tokens.tsv"
}
printf 'node\twho\ttoken\n' >"$state/offline/tokens.tsv"
for n in 0 1 2 3; do
    tokens="$state/validator-$n/secrets/tokens.json"
    issue "$tokens" "member ${firms[$n]}" --role member --member "${firms[$n]}" --id "${firms[$n]}"
    issue "$tokens" "operator" --role operator --id "operator"
    issue "$tokens" "auditor origin-audit" --role auditor --id "origin-audit"

    password="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    printf '%s' "$password" >"$state/validator-$n/postgres-password"
    printf 'postgres-%s:5432:coopledger:coopledger:%s\n' "$n" "$password" \
        >"$state/validator-$n/secrets/pgpass"
done

echo "init.sh: wrote $state (chain $chain_id); API tokens in $state/offline/tokens.tsv" >&2
