#!/bin/sh
# The one-shot `certs` service of compose.yaml (installed in the image as meshscope-deploy-certs):
# makes what is missing of the mesh's certificates and tokens, and leaves what exists alone, so it
# runs at every `docker compose up` and changes nothing after the first.
#
#   meshscope-deploy-certs --out=DIR --ca-dir=DIR --regions=IDS --clients=NAMES --hosts=HOSTS
#                          --dashboard-hosts=HOSTS
#   ROTATE=certs|tokens|ca (comma-separated) re-issues the certificates, makes new tokens, or
#   replaces both CAs (and so every certificate).
#
# Two directories, two trust levels:
#
#   --ca-dir (private; mounted by this service only)
#     mesh/        `meshscope certs` output: the mesh CA (ca.key signs relay identities) and leaves
#     web/         a second CA that signs only the dashboard's HTTPS certificate
#     ops.token    the bearer token of the `ops` principal (viewer, sql, admin), for a person
#   --out (public; mounted read-only by every service)
#     ca.pem                        the mesh CA certificate
#     region-<id>.pem/.key          one per relay (file names as `meshscope certs` writes them)
#     client-<name>.pem/.key        one per --clients name
#     dashboard.pem/.key            the dashboard's HTTPS certificate, signed by the web CA
#     web-ca.pem                    the web CA certificate, for browsers and the dashboard's health check
#     principals.toml               MESHSCOPE_AUTH_FILE: token hashes only, never a token
#     simulator.token, collector.token, prometheus.token   one bearer token each (mode 0600)
#
# Why the dashboard's certificate comes from its own CA: a client certificate cannot serve (it is
# clientAuth only), and a region certificate from the mesh CA would be a mesh identity: relays accept
# a region certificate of their CA on /v1/mesh (when the principals file lists the mesh's relays,
# only for a listed region), so the dashboard's key, on the most exposed container, must not be one.
# A certificate of a CA the relays do not trust serves HTTPS for the dashboard's host names and is
# worth nothing on the mesh.
set -eu
umask 077

usage() {
    echo "usage: meshscope-deploy-certs --out=DIR --ca-dir=DIR --regions=IDS --clients=NAMES --hosts=HOSTS" \
        "--dashboard-hosts=HOSTS" >&2
    exit 2
}

out='' ca_dir='' regions='' clients='' hosts='' dashboard_hosts=''
for arg in "$@"; do
    case $arg in
        --out=*) out=${arg#*=} ;;
        --ca-dir=*) ca_dir=${arg#*=} ;;
        --regions=*) regions=${arg#*=} ;;
        --clients=*) clients=${arg#*=} ;;
        --hosts=*) hosts=${arg#*=} ;;
        --dashboard-hosts=*) dashboard_hosts=${arg#*=} ;;
        *) usage ;;
    esac
done
if [ -z "$out" ] || [ -z "$ca_dir" ] || [ -z "$regions" ] || [ -z "$dashboard_hosts" ]; then
    usage
fi

rotate=",${ROTATE:-},"
rotating() { case $rotate in *",$1,"*) return 0 ;; *) return 1 ;; esac }
for word in $(echo "$rotate" | tr ',' ' '); do
    case $word in
        certs | tokens | ca) ;;
        *) echo "ROTATE: unknown word '$word' (certs, tokens, ca)" >&2; exit 2 ;;
    esac
done
force=''
if rotating ca; then
    force=yes
    rotate="${rotate}certs,"
fi

# copy SRC to DST with MODE, atomically
publish() {
    cp "$1" "$3.tmp"
    chmod "$2" "$3.tmp"
    mv -f "$3.tmp" "$3"
}

# the stems `meshscope certs` gives its files: region-aws_us-east-1, client-simulator
stems() {
    for name in $(echo "$2" | tr ',' ' '); do
        echo "$1-$(echo "$name" | tr ':' '_')"
    done
}

mkdir -p "$out" "$ca_dir"
leaf_stems="$(stems region "$regions") $(stems client "$clients")"

missing=''
for f in ca.pem dashboard.pem dashboard.key web-ca.pem; do
    [ -f "$out/$f" ] || missing=yes
done
for stem in $leaf_stems; do
    [ -f "$out/$stem.pem" ] && [ -f "$out/$stem.key" ] || missing=yes
done

if [ -n "$missing" ] || rotating certs; then
    # `meshscope certs` reuses the CA it finds (unless --force) and re-issues the named certificates
    meshscope certs ${force:+--force} --out "$ca_dir/mesh" --regions "$regions" ${clients:+--clients "$clients"} \
        ${hosts:+--hosts "$hosts"}
    meshscope certs ${force:+--force} --out "$ca_dir/web" --regions web:dashboard --hosts "$dashboard_hosts"
    publish "$ca_dir/mesh/ca.pem" 0644 "$out/ca.pem"
    for stem in $leaf_stems; do
        publish "$ca_dir/mesh/$stem.pem" 0644 "$out/$stem.pem"
        publish "$ca_dir/mesh/$stem.key" 0600 "$out/$stem.key"
    done
    publish "$ca_dir/web/region-web_dashboard.pem" 0644 "$out/dashboard.pem"
    publish "$ca_dir/web/region-web_dashboard.key" 0600 "$out/dashboard.key"
    publish "$ca_dir/web/ca.pem" 0644 "$out/web-ca.pem"
else
    echo "certificates present (ROTATE=certs re-issues them)"
fi

# a token file, made when missing or rotated (umask 077: mode 0600)
token() {
    if [ ! -s "$1" ] || rotating tokens; then
        python -c 'from meshcore.auth import new_token; print(new_token())' >"$1.tmp"
        mv -f "$1.tmp" "$1"
        echo "new token in $1"
    fi
}

# the principals entry of NAME with the token in FILE, GROUPS and ROLES comma-separated
entry() {
    python -c '
import sys
from meshcore.auth import principal_entry

name, groups, roles = sys.argv[1:]
token = sys.stdin.read().strip()
print(principal_entry(name, token, groups.split(",") if groups else None, roles.split(",") if roles else None))
' "$1" "$3" "$4" <"$2"
}

token "$out/simulator.token"
token "$out/collector.token"
token "$out/prometheus.token"
token "$ca_dir/ops.token"

principals="$out/principals.toml.tmp"
{
    echo "# Written by meshscope-deploy-certs; token hashes only. Relays authenticate each other by certificate."
    echo
    entry simulator "$out/simulator.token" producers ''
    entry collector "$out/collector.token" '' ''
    entry prometheus "$out/prometheus.token" '' ''
    entry ops "$ca_dir/ops.token" '' viewer,sql,admin
    for region in $(echo "$regions" | tr ',' ' '); do
        printf '[principals."relay:%s"]\nregion = "%s"\n\n' "$region" "$region"
    done
} >"$principals"
python -c 'import sys; from meshcore.auth import load_principals; load_principals(sys.argv[1])' "$principals"
chmod 0644 "$principals"
if cmp -s "$principals" "$out/principals.toml"; then
    rm -f "$principals"
else
    mv -f "$principals" "$out/principals.toml"
    echo "wrote $out/principals.toml"
fi
