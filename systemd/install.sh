#!/bin/sh
# Install nstd as a systemd service: the service user, its folders under one root, the style
# images, /etc/nstd/config.yaml (daemon.root set, nothing else changed) and the unit. It does
# not start anything; it ends with `nstd check-config` run as the service user, the same
# start-up checks `nstd run` makes. Run it again safely: an existing config and existing style
# images are kept. See README, "Run it as a service".
#
#   sudo sh systemd/install.sh                      # defaults below
#   sh systemd/install.sh --root /tmp/r --config-dir /tmp/etc --unit-dir /tmp/units \
#      --venv .venv --user "$(id -un)" --no-useradd # a trial run, no root needed (the tests)
set -eu

root=/var/lib/nstd
config_dir=/etc/nstd
unit_dir=/etc/systemd/system
venv=/opt/nstd/.venv
user=nstd
useradd=yes
source_dir=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    echo "usage: $0 [--root DIR] [--config-dir DIR] [--unit-dir DIR] [--venv DIR]" \
         "[--user NAME] [--no-useradd] [--source DIR]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=$2; shift 2 ;;
        --config-dir) config_dir=$2; shift 2 ;;
        --unit-dir) unit_dir=$2; shift 2 ;;
        --venv) venv=$2; shift 2 ;;
        --user) user=$2; shift 2 ;;
        --no-useradd) useradd=no; shift ;;
        --source) source_dir=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown option $1" >&2; usage ;;
    esac
done

absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$(pwd)" "$1" ;; esac; }
root=$(absolute "$root"); config_dir=$(absolute "$config_dir")
unit_dir=$(absolute "$unit_dir"); venv=$(absolute "$venv")
nstd="$venv/bin/nstd"
if [ ! -x "$nstd" ]; then
    echo "install.sh: $nstd is missing; install nstd first:" \
         "python3 -m venv $venv && $venv/bin/pip install $source_dir" >&2
    exit 1
fi

# 1. The service user (a system user whose home is the root, no login shell).
if ! id -u "$user" >/dev/null 2>&1; then
    if [ "$useradd" = no ]; then
        echo "install.sh: user $user does not exist (drop --no-useradd to create it)" >&2
        exit 1
    fi
    useradd --system --user-group --home-dir "$root" --no-create-home \
        --shell /usr/sbin/nologin "$user"
fi
group=$(id -gn "$user")

# 2. Folders: the daemon's under root/data (the config's defaults under daemon.root), the
# torch cache for the weights download, and the inbox writable by the group (setgid: files
# dropped in keep the group). Ownership only when run as root.
make_dir() {  # MODE DIR
    install -d -m "$1" "$2"
    if [ "$(id -u)" -eq 0 ]; then chown "$user:$group" "$2"; fi
}
make_dir 0750 "$root"
make_dir 0750 "$root/data"
for folder in outbox work failed done state; do make_dir 0750 "$root/data/$folder"; done
make_dir 2770 "$root/data/inbox"
make_dir 0750 "$root/torch"
make_dir 0750 "$root/styles"

# 3. Style images: the files inside styles/, into root/styles/ (not the folder itself).
for style in "$source_dir"/styles/*.png "$source_dir"/styles/*.jpg; do
    [ -f "$style" ] || continue
    target="$root/styles/$(basename "$style")"
    if [ -e "$target" ]; then
        echo "kept $target"
        continue
    fi
    install -m 0640 "$style" "$target.tmp.$$"
    if [ "$(id -u)" -eq 0 ]; then chown "$user:$group" "$target.tmp.$$"; fi
    mv "$target.tmp.$$" "$target"
done

# 4. The config: the shipped one with daemon.root pointing at the root. Never overwritten.
config="$config_dir/config.yaml"
install -d -m 0755 "$config_dir"
if [ -e "$config" ]; then
    echo "kept $config (delete it to get a fresh one)"
else
    sed "s|^  root: \\.  |  root: $root|" "$source_dir/config.yaml" > "$config.tmp.$$"
    if ! grep -q "^  root: $root" "$config.tmp.$$"; then
        rm -f "$config.tmp.$$"
        echo "install.sh: could not set daemon.root in $config (config.yaml changed?)" >&2
        exit 1
    fi
    chmod 0644 "$config.tmp.$$"
    mv "$config.tmp.$$" "$config"
    echo "wrote $config"
fi

# 5. The unit, with this install's paths and user. StateDirectory= and
# ConfigurationDirectory= name /var/lib/nstd and /etc/nstd: kept only where those are used.
unit="$unit_dir/nstd.service"
install -d -m 0755 "$unit_dir"
never='/^#never-matches#$/d'
drop_state=$never
[ "$root" = /var/lib/nstd ] || drop_state='/^StateDirectory/d'
drop_conf=$never
[ "$config_dir" = /etc/nstd ] || drop_conf='/^ConfigurationDirectory=/d'
sed -e "s|/opt/nstd/.venv|$venv|g" -e "s|/etc/nstd/config.yaml|$config|g" \
    -e "s|/var/lib/nstd|$root|g" -e "s|^User=.*|User=$user|" -e "s|^Group=.*|Group=$group|" \
    -e "$drop_state" -e "$drop_conf" \
    "$source_dir/systemd/nstd.service" > "$unit.tmp.$$"
chmod 0644 "$unit.tmp.$$"
mv "$unit.tmp.$$" "$unit"
echo "wrote $unit"

# 6. The same start-up checks as `nstd run`, as the service user.
if [ "$(id -un)" = "$user" ]; then
    "$nstd" check-config --config "$config"
else
    runuser -u "$user" -- "$nstd" check-config --config "$config"
fi

echo "next: systemctl daemon-reload && systemctl enable --now nstd && journalctl -u nstd -f"
