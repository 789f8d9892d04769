#!/usr/bin/env bash
# Secrets for one edge-agent site: a CA, the broker's TLS certificate, optional client
# certificates, MQTT passwords and the Mosquitto password file, with the ownership the containers
# need. docs/deploy.md explains where each file goes.
#
#   sudo deploy/make-site-secrets.sh --out deploy/site --site hamburg --san broker.plant.local --san 10.20.0.5
#
# Layout of --out (all of it secret except the certificates):
#   ca.crt                    the site CA: give it to every client (agent, sensors, operators)
#   private/ca.key            the CA key: move it offline once the certificates are issued
#   broker/server.crt         broker certificate, SAN: your --san names + mosquitto + localhost
#   broker/server.key         broker key          uid 1883 (eclipse-mosquitto), mode 0600
#   broker/passwd             Mosquitto password file (hashed)  uid 1883, mode 0600
#   passwords/<user>          one random password per MQTT user, first line, no newline:
#                               edge-agent   uid 10001 (the agent image), mode 0400
#                               healthcheck  uid 1883 (the broker's health check), mode 0400
#                               others       root, mode 0600: hand them to the people concerned
#   clients/<name>.crt|.key   with --client NAME (key: uid 10001 for edge-agent, else root; 0600)
#   agent/checkpoint-key      the key that authenticates the agent's checkpoints (HMAC-SHA256;
#                             32 random bytes, hex), uid 10001, mode 0400: a compose secret, or
#                             /etc/edge-agent/checkpoint-key for systemd's LoadCredential=
#
# Idempotent: refuses to touch an existing --out that holds any of these files unless --force
# (which replaces everything, the CA included: every client then needs the new ca.crt).
# Nothing secret is printed; passwords never appear on a command line (mosquitto_passwd -U
# hashes a file in place).
set -euo pipefail
umask 077

usage() {
    cat <<'EOF'
usage: make-site-secrets.sh --out DIR --san NAME [--san NAME]... [options]

  --out DIR             output directory (created, mode 0700)
  --san NAME            a name clients use to reach the broker: DNS name or IP address, or
                        DNS:NAME / IP:ADDR (repeat). "mosquitto" (the compose service) and
                        "localhost" are always included.
  --site NAME           site name for the certificate subjects (default: site)
  --users "LIST"        MQTT users (default: "edge-agent operator sensor healthcheck"; they must
                        match deploy/mosquitto/acl)
  --client NAME         also issue a client certificate for NAME (repeat)
  --days N              validity of the server and client certificates (default 825); CA 3650
  --broker-uid UID:GID  owner of the broker's key, password file and healthcheck password
                        (default 1883:1883, the mosquitto user of the eclipse-mosquitto image;
                        use the host's "mosquitto" user for a Mosquitto from a distribution)
  --agent-uid UID:GID   owner of the agent's password file and client key (default 10001:10001,
                        the user of the edge-agent image; systemd LoadCredential= needs root:root)
  --no-chown            leave every file owned by the caller (then fix ownership yourself,
                        e.g. with "podman unshare chown" for rootless Podman)
  --mosquitto-passwd M  how to run mosquitto_passwd: auto (default: the host's, else podman,
                        else docker), host, podman or docker
  --mosquitto-image I   image for podman/docker (default eclipse-mosquitto:2)
  --force               overwrite existing secrets
EOF
}

die() { echo "make-site-secrets: $*" >&2; exit 1; }
say() { echo "make-site-secrets: $*" >&2; }

out="" site="site" users="edge-agent operator sensor healthcheck" days=825
broker_owner="1883:1883" agent_owner="10001:10001" chown_files=1 force=0
passwd_mode="auto" mosquitto_image="eclipse-mosquitto:2"
sans=() clients=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?}; shift 2 ;;
        --san) sans+=("${2:?}"); shift 2 ;;
        --site) site=${2:?}; shift 2 ;;
        --users) users=${2:?}; shift 2 ;;
        --client) clients+=("${2:?}"); shift 2 ;;
        --days) days=${2:?}; shift 2 ;;
        --broker-uid) broker_owner=${2:?}; shift 2 ;;
        --agent-uid) agent_owner=${2:?}; shift 2 ;;
        --no-chown) chown_files=0; shift ;;
        --mosquitto-passwd) passwd_mode=${2:?}; shift 2 ;;
        --mosquitto-image) mosquitto_image=${2:?}; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[ -n "$out" ] || { usage >&2; die "--out is required"; }
[ ${#sans[@]} -gt 0 ] || { usage >&2; die "at least one --san (the broker's name on the plant network) is required"; }
[[ "$days" =~ ^[0-9]+$ ]] || die "--days must be a number of days"
for owner in "$broker_owner" "$agent_owner"; do
    [[ "$owner" =~ ^[0-9]+:[0-9]+$ ]] || die "owners are numeric UID:GID, got '$owner'"
done
for name in $users "${clients[@]}"; do
    # user names end up in file names and certificate subjects
    [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "invalid user or client name '$name'"
done
command -v openssl >/dev/null || die "openssl is required (apt-get install openssl)"
if [ "$chown_files" = 1 ] && [ "$(id -u)" != 0 ]; then
    die "run as root so the files can be given to uid ${broker_owner%%:*} and ${agent_owner%%:*}, or pass --no-chown"
fi

# --- how to run mosquitto_passwd --------------------------------------------------------------
host_passwd=$(command -v mosquitto_passwd || true)
if [ -z "$host_passwd" ] && [ -x /usr/bin/mosquitto_passwd ]; then host_passwd=/usr/bin/mosquitto_passwd; fi
if [ "$passwd_mode" = auto ]; then
    if [ -n "$host_passwd" ]; then passwd_mode=host
    elif command -v podman >/dev/null; then passwd_mode=podman
    elif command -v docker >/dev/null; then passwd_mode=docker
    else die "need mosquitto_passwd (apt-get install mosquitto), podman or docker"; fi
fi
case "$passwd_mode" in
    host) [ -n "$host_passwd" ] || die "mosquitto_passwd not found (apt-get install mosquitto)" ;;
    podman|docker) command -v "$passwd_mode" >/dev/null || die "$passwd_mode not found" ;;
    *) die "--mosquitto-passwd must be auto, host, podman or docker" ;;
esac

# --- refuse to overwrite ----------------------------------------------------------------------
existing=()
for f in ca.crt private/ca.key broker/server.crt broker/server.key broker/passwd; do
    [ -e "$out/$f" ] && existing+=("$f")
done
for u in $users; do [ -e "$out/passwords/$u" ] && existing+=("passwords/$u"); done
[ -e "$out/agent/checkpoint-key" ] && existing+=("agent/checkpoint-key")
for c in "${clients[@]}"; do [ -e "$out/clients/$c.key" ] && existing+=("clients/$c.key"); done
if [ ${#existing[@]} -gt 0 ]; then
    [ "$force" = 1 ] || die "$out already holds secrets (${existing[*]}); nothing changed. --force replaces all of them, the CA included"
    say "--force: replacing ${#existing[@]} existing file(s) in $out"
fi

mkdir -p "$out"
chmod 0700 "$out"
mkdir -p "$out/private" "$out/broker" "$out/passwords" "$out/agent"
[ ${#clients[@]} -eq 0 ] || mkdir -p "$out/clients"
chmod 0700 "$out/private" "$out/broker" "$out/passwords" "$out/agent"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- subjectAltName of the broker -------------------------------------------------------------
san_list=()
add_san() {
    local entry=$1
    case "$entry" in
        DNS:*|IP:*) ;;
        *) if [[ "$entry" =~ ^[0-9.]+$ || "$entry" == *:* ]]; then entry="IP:$entry"; else entry="DNS:$entry"; fi ;;
    esac
    local seen
    for seen in "${san_list[@]}"; do [ "$seen" = "$entry" ] && return 0; done
    san_list+=("$entry")
}
for s in "${sans[@]}"; do add_san "$s"; done
add_san DNS:mosquitto
add_san DNS:localhost
san=$(IFS=,; echo "${san_list[*]}")
first_name=${san_list[0]#*:}

# One small OpenSSL configuration instead of the system's, so no default extension sneaks in.
cat > "$work/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 0600 "$1"; }
serial() { echo "0x$(openssl rand -hex 16)"; }
sign() {  # sign KEY SUBJECT SECTION OUT
    openssl req -new -config "$work/openssl.cnf" -key "$1" -subj "$2" -out "$work/req.csr"
    openssl x509 -req -in "$work/req.csr" -CA "$out/ca.crt" -CAkey "$out/private/ca.key" \
        -set_serial "$(serial)" -days "$days" -sha256 \
        -extfile "$work/openssl.cnf" -extensions "$3" -out "$4" 2>/dev/null
    chmod 0644 "$4"
}

# --- CA ---------------------------------------------------------------------------------------
say "CA for site '$site'"
newkey "$out/private/ca.key"
openssl req -x509 -new -config "$work/openssl.cnf" -key "$out/private/ca.key" \
    -subj "/O=edge-agent/CN=edge-agent site CA $site" -set_serial "$(serial)" -days 3650 -sha256 \
    -extensions ca -out "$out/ca.crt"
chmod 0644 "$out/ca.crt"

# --- broker certificate -----------------------------------------------------------------------
say "broker certificate for $san"
newkey "$out/broker/server.key"
sign "$out/broker/server.key" "/O=edge-agent/OU=$site/CN=$first_name" server "$out/broker/server.crt"
openssl verify -CAfile "$out/ca.crt" "$out/broker/server.crt" >/dev/null || die "broker certificate does not verify"

# --- client certificates ----------------------------------------------------------------------
for c in "${clients[@]}"; do
    say "client certificate for $c"
    newkey "$out/clients/$c.key"
    sign "$out/clients/$c.key" "/O=edge-agent/OU=$site/CN=$c" client "$out/clients/$c.crt"
done

# --- passwords and the Mosquitto password file ------------------------------------------------
# 24 random bytes, URL-safe base64: 32 characters, nothing a shell or a config file would mangle.
: > "$work/passwd"
for u in $users; do
    pw=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
    printf '%s' "$pw" > "$out/passwords/$u"
    printf '%s:%s\n' "$u" "$pw" >> "$work/passwd"
done
unset pw
say "hashing the password file with mosquitto_passwd ($passwd_mode)"
case "$passwd_mode" in
    host) "$host_passwd" -U "$work/passwd" ;;
    podman|docker)
        # No network, nothing but the work directory mounted; :z relabels it where SELinux is on.
        "$passwd_mode" run --rm --network none --user 0:0 -v "$work:/work:z" "$mosquitto_image" \
            mosquitto_passwd -U /work/passwd ;;
esac
grep -q '^[^:]*:\$7\$' "$work/passwd" || die "mosquitto_passwd did not produce hashed entries"
cp "$work/passwd" "$out/broker/passwd"

# --- the agent's checkpoint key ----------------------------------------------------------------
# Kept outside the agent's state directory: whoever can write a checkpoint without it is refused.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$out/agent/checkpoint-key"

# --- ownership and modes ----------------------------------------------------------------------
chmod 0600 "$out/broker/server.key" "$out/broker/passwd" "$out"/passwords/*
chmod 0400 "$out/agent/checkpoint-key"
if [ "$chown_files" = 1 ]; then
    chown "$broker_owner" "$out/broker/server.key" "$out/broker/passwd"
    for u in $users; do
        case "$u" in
            edge-agent) chown "$agent_owner" "$out/passwords/$u"; chmod 0400 "$out/passwords/$u" ;;
            healthcheck) chown "$broker_owner" "$out/passwords/$u"; chmod 0400 "$out/passwords/$u" ;;
        esac
    done
    for c in "${clients[@]}"; do
        [ "$c" = edge-agent ] && chown "$agent_owner" "$out/clients/$c.key"
    done
    chown "$agent_owner" "$out/agent/checkpoint-key"
fi
# Directories: traversable but not listable (0711). Containers get single files bind-mounted by
# the runtime (root); a Mosquitto running natively as its own user (a distribution's package)
# needs to traverse them. private/ stays root-only.
chmod 0700 "$out/private"
chmod 0711 "$out" "$out/broker" "$out/passwords" "$out/agent"
[ ${#clients[@]} -eq 0 ] || chmod 0711 "$out/clients"

say "done; files (mode uid:gid path):"
find "$out" -type f -printf '  %m %U:%G %P\n' | sort -k3 >&2
say "keep $out/private/ca.key offline; the passwords in $out/passwords/ are the only clear copies"
