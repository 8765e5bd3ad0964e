#!/bin/sh
# Team accounts of the terminal container (deploy/compose.team.yml): passwd, group and shadow
# kept in /accounts (the host's $MIXVLLM_TEAM_ACCOUNTS), homes on the team-homes volume.
# Runs in a one-off container of the terminal image with Debian's own tools (useradd,
# chpasswd); the terminal container mounts the three files read-only over its /etc ones.
set -eu
A=/accounts
FIRST_UID=2000  # people: at or above the server's --min-uid (1000), below the image's 10001
umask 077

usage() {
    echo "usage: accounts add NAME | passwd NAME | group GROUP NAME | del NAME | list" >&2
    exit 2
}

# The new password: the first line of stdin when it is not a terminal, else a generated one.
set_password() {
    if [ -t 0 ]; then
        pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
        echo "password of $1: $pw"
    else
        pw=""
        IFS= read -r pw || true
        [ -n "$pw" ] || { echo "accounts: no password on stdin" >&2; exit 1; }
    fi
    printf '%s:%s\n' "$1" "$pw" | chpasswd
}

[ $# -ge 1 ] || usage
if [ ! -s "$A/passwd" ]; then  # first use: the image's own accounts (root, mixvllm, chat...)
    cp /etc/passwd /etc/group /etc/shadow "$A/"
fi
cp "$A/passwd" /etc/passwd && cp "$A/group" /etc/group && cp "$A/shadow" /etc/shadow

case "$1" in
    add)
        [ $# -eq 2 ] || usage
        # The lowest free uid from FIRST_UID (useradd would take one past the image's 10002).
        uid=$FIRST_UID
        while getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null; do
            uid=$((uid + 1))
        done
        useradd --create-home --shell /bin/bash --uid "$uid" "$2"
        chmod 700 "/home/$2"
        set_password "$2"
        ;;
    passwd) [ $# -eq 2 ] || usage; set_password "$2" ;;
    group)
        [ $# -eq 3 ] || usage
        getent group "$2" >/dev/null || groupadd --key GID_MIN=$FIRST_UID "$2"
        usermod --append --groups "$2" "$3"
        ;;
    del) [ $# -eq 2 ] || usage; userdel "$2" ;;  # the home stays on the volume
    list) awk -F: -v first=$FIRST_UID '$3 >= first && $3 < 10000 { print $1 }' /etc/passwd ;;
    *) usage ;;
esac

# In place (cp keeps the files' inodes): the running terminal container sees the change.
cp /etc/passwd "$A/passwd" && cp /etc/group "$A/group" && cp /etc/shadow "$A/shadow"
chmod 644 "$A/passwd" "$A/group"
chmod 600 "$A/shadow"
