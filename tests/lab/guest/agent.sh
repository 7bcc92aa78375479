#!/bin/sh
# Guest side of the lab's control channel (busybox ash). Usage: lab-agent TTY
#
# The host sends one line per request on a dedicated serial port and keeps command
# text, stdout and stderr in files on the scratch share, so the tty only carries short
# ASCII lines and binary output never crosses it:
#   host -> guest   run ID       run $LAB_SCRATCH/cmd/ID.sh in the background
#                   kill ID      SIGKILL the process group of that command
#                   poweroff     save dmesg to the scratch share and power off
#   guest -> host   ready RELEASE UPTIME
#                   done ID RC   (written by lab-run when the command exits)
# Commands run in the background so a hung one can still be killed and others run.
# They are never the agent's own children: busybox ash's read starts over, dropping the part
# of a line it has read, when a SIGCHLD interrupts it, and the serial line may deliver a
# request in pieces. So a command ending while a request arrived would lose that request.

tty=$1
stty -F "$tty" raw -echo || exit 1
exec 3<>"$tty"
mkdir -p /run/lab/pids "$LAB_SCRATCH/cmd"
read -r uptime _ </proc/uptime
echo "ready $(uname -r) $uptime" >&3

while read -r verb id <&3; do
    case "$verb" in
        run)
            # setsid: the command gets its own process group, which "kill" targets. The
            # subshell, waited for here, ends at once: init inherits and reaps lab-run.
            (
                setsid /bin/lab-run "$id" &
                echo $! >"/run/lab/pids/$id"
            )
            ;;
        kill)
            [ -f "/run/lab/pids/$id" ] && kill -KILL -- "-$(cat "/run/lab/pids/$id")"
            echo "killed $id" >&3
            ;;
        poweroff)
            break
            ;;
    esac
done

dmesg >"$LAB_SCRATCH/dmesg.txt"
sync
poweroff -f
