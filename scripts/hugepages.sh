#!/usr/bin/env bash
# Prepares hugepages for the DPDK engine (hw/README.md): reserves N pages of
# 2 MiB or 1 GiB (on one NUMA node or spread by the kernel) and mounts a
# hugetlbfs of that page size. Idempotent: a reservation already as large is
# left alone (never lowered: another process may be using it), a mount that
# exists is reused. Prints what it found and what it did.
#
#   scripts/hugepages.sh                       # 1024 x 2 MiB, mounted on /dev/hugepages
#   scripts/hugepages.sh --size 1G --count 4 --node 0
#   scripts/hugepages.sh --dry-run             # show the commands, change nothing
#
# Needs root (except --dry-run). Runtime reservation of 1 GiB pages often
# fails on a host that has been up a while (memory too fragmented): the
# script says so and prints the kernel command line that reserves them at
# boot. Reservations made here do not survive a reboot (see the end of the
# output for the persistent forms).
set -euo pipefail

size=2M
count=1024
node=""
mountpoint=""
dry=0

usage() {
  cat <<'EOF'
usage: scripts/hugepages.sh [--size 2M|1G] [--count N] [--node N] [--mount DIR] [--dry-run]
  --size     page size (default 2M)
  --count    pages to have reserved (default 1024; with --node: on that node)
  --node     NUMA node of the NIC and the worker lcores (default: kernel spreads them)
  --mount    hugetlbfs mount point (default /dev/hugepages for 2M, /dev/hugepages-1G for 1G)
  --dry-run  print what would be done and change nothing
EOF
  exit "${1:-0}"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --size) size="${2:?--size needs a value}"; shift 2 ;;
    --count) count="${2:?--count needs a value}"; shift 2 ;;
    --node) node="${2:?--node needs a value}"; shift 2 ;;
    --mount) mountpoint="${2:?--mount needs a value}"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "hugepages.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

case "$size" in
  2M|2m|2048k|2048kB) size=2M; kb=2048; default_mount=/dev/hugepages ;;
  1G|1g|1048576k|1048576kB) size=1G; kb=1048576; default_mount=/dev/hugepages-1G ;;
  *) echo "hugepages.sh: --size is 2M or 1G" >&2; exit 2 ;;
esac
case "$count" in ''|*[!0-9]*) echo "hugepages.sh: --count must be a number" >&2; exit 2 ;; esac
if [ -n "$node" ]; then
  case "$node" in *[!0-9]*) echo "hugepages.sh: --node must be a number" >&2; exit 2 ;; esac
fi
mountpoint="${mountpoint:-$default_mount}"

run() {  # prints the command; runs it unless --dry-run
  echo "  + $*"
  if [ "$dry" -eq 0 ]; then "$@"; fi
}
write_sys() {  # write_sys VALUE FILE, printed the same way
  echo "  + echo $1 > $2"
  if [ "$dry" -eq 0 ]; then echo "$1" > "$2"; fi
}

if [ "$dry" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "hugepages.sh: needs root (or use --dry-run)" >&2
  exit 1
fi

if [ -n "$node" ]; then
  sysdir="/sys/devices/system/node/node${node}/hugepages/hugepages-${kb}kB"
  where="NUMA node $node"
else
  sysdir="/sys/kernel/mm/hugepages/hugepages-${kb}kB"
  where="all nodes"
fi

if [ ! -d "$sysdir" ]; then
  if [ "$size" = 1G ] && ! grep -qw pdpe1gb /proc/cpuinfo; then
    echo "hugepages.sh: this CPU has no 1 GiB pages (no pdpe1gb flag); use --size 2M" >&2
  elif [ -n "$node" ] && [ ! -d "/sys/devices/system/node/node${node}" ]; then
    echo "hugepages.sh: no NUMA node $node (see /sys/devices/system/node)" >&2
  else
    echo "hugepages.sh: the kernel offers no ${size} pages here ($sysdir missing)" >&2
  fi
  exit 1
fi

echo "hugepages: ${count} x ${size} on ${where}, hugetlbfs on ${mountpoint}$([ "$dry" -eq 1 ] && echo ' (dry run)')"

# 1. Reservation.
have=$(cat "$sysdir/nr_hugepages")
if [ "$have" -ge "$count" ]; then
  echo "reserve: ${have} pages already reserved (>= ${count}): unchanged"
else
  echo "reserve: ${have} -> ${count} pages"
  # Freed page cache and compacted memory make contiguous pages likelier.
  if [ "$size" = 1G ] || [ "$count" -gt 4096 ]; then
    run sync
    write_sys 1 /proc/sys/vm/compact_memory 2>/dev/null || true
  fi
  write_sys "$count" "$sysdir/nr_hugepages"
  if [ "$dry" -eq 0 ]; then
    got=$(cat "$sysdir/nr_hugepages")
    if [ "$got" -lt "$count" ]; then
      echo "reserve: the kernel gave ${got} of ${count} pages (memory too fragmented or too small)" >&2
      echo "         reserve them at boot instead (kernel command line):" >&2
      if [ "$size" = 1G ]; then
        echo "           default_hugepagesz=1G hugepagesz=1G hugepages=${count}" >&2
      else
        echo "           hugepagesz=2M hugepages=${count}" >&2
      fi
      exit 1
    fi
    echo "reserve: ${got} pages reserved"
  fi
fi

# 2. hugetlbfs mount of this page size (DPDK finds it in /proc/mounts).
mounted=$(awk -v m="$mountpoint" '$2 == m && $3 == "hugetlbfs" { print $4 }' /proc/mounts)
if [ -n "$mounted" ]; then
  case ",$mounted," in
    *,pagesize=${size},*|*,pagesize=${size}B,*)
      echo "mount: ${mountpoint} already hugetlbfs (${mounted}): unchanged" ;;
    *,pagesize=*)
      echo "hugepages.sh: ${mountpoint} is a hugetlbfs of another page size (${mounted}); use --mount DIR" >&2
      exit 1 ;;
    *)
      # No pagesize option: the default hugepage size (Hugepagesize in /proc/meminfo).
      def_kb=$(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo)
      if [ "$def_kb" = "$kb" ]; then
        echo "mount: ${mountpoint} already hugetlbfs of the default size ${size}: unchanged"
      else
        echo "hugepages.sh: ${mountpoint} is a hugetlbfs of the default size (${def_kb} kB), not ${size}; use --mount DIR" >&2
        exit 1
      fi ;;
  esac
else
  echo "mount: hugetlbfs pagesize=${size} on ${mountpoint}"
  [ -d "$mountpoint" ] || run mkdir -p "$mountpoint"
  run mount -t hugetlbfs -o "pagesize=${size}" nodev "$mountpoint"
fi

# 3. What DPDK will see.
echo "now:"
for d in /sys/devices/system/node/node*/hugepages/"hugepages-${kb}kB"; do
  [ -d "$d" ] || continue
  n=${d#/sys/devices/system/node/node}
  n=${n%%/*}
  echo "  node ${n}: $(cat "$d/nr_hugepages") x ${size} reserved, $(cat "$d/free_hugepages") free"
done
if [ ! -d /sys/devices/system/node/node0 ]; then
  echo "  $(cat "$sysdir/nr_hugepages") x ${size} reserved, $(cat "$sysdir/free_hugepages") free"
fi
echo "persistent forms (not done here):"
echo "  boot:  hugepagesz=${size} hugepages=${count}$([ "$size" = 1G ] && echo ' default_hugepagesz=1G')"
echo "  fstab: nodev ${mountpoint} hugetlbfs pagesize=${size} 0 0"
