#!/bin/sh
# Run one host-submitted command for lab-agent (busybox ash). Usage: lab-run ID
#
# fd 3 is the control tty inherited from the agent: the command itself gets it closed,
# so daemons it starts never hold (or write to) the control channel.

id=$1
dir=$LAB_SCRATCH/cmd
cd / || exit 1
sh "$dir/$id.sh" </dev/null >"$dir/$id.out" 2>"$dir/$id.err" 3>&-
echo "done $id $?" >&3
