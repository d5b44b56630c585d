#!/usr/bin/env bash
# Builds the one-file Dispatchbox: a static x86_64 Linux executable (musl libc, OpenSSL built
# from source and linked in: the `vendored-openssl` feature, the `static` profile), checks
# that it is static, and prints its path, size and sha256. Also packs it with LICENSE, NOTICE
# (the OpenSSL license notice a vendored build must ship with), the man page and the shell
# completions (made by the built binary: `dispatchbox generate ...`) into a tarball:
#   dispatchbox  LICENSE  NOTICE  man/dispatchbox.1
#   completions/dispatchbox.bash  completions/_dispatchbox (zsh)  completions/dispatchbox.fish
#
#   scripts/build-static.sh            # then copy the printed binary anywhere and run it
#
# Installs what is missing first (saying what): the Rust target x86_64-unknown-linux-musl
# (rustup), and musl-gcc, perl and make (openssl-src compiles OpenSSL with them) and `file`
# through apt-get, dnf or apk when run as root; otherwise it prints the command to run. Building
# OpenSSL takes a few minutes on a small machine; later builds reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
profile=static
out_dir="${CARGO_TARGET_DIR:-target}/$target/$profile"
bin="$out_dir/dispatchbox"

say() { printf '\n== %s\n' "$*" >&2; }
die() { echo "build-static.sh: $*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust 1.89 or later (https://rustup.rs)"
[[ $(uname -m) == x86_64 ]] || die "this script builds on x86_64 Linux only (found $(uname -m))"

# The system packages missing for a musl build, as package names for package manager $1.
missing_packages() {
    local pm=$1
    if [[ $pm != apk ]] && ! command -v musl-gcc >/dev/null; then
        case $pm in
            apt-get) echo musl-tools ;;
            dnf) echo musl-gcc ;;
        esac
    fi
    # On Alpine the system compiler already targets musl; openssl-src needs the kernel headers.
    [[ $pm == apk ]] && ! [[ -e /usr/include/linux/mman.h ]] && echo linux-headers
    command -v perl >/dev/null || { [[ $pm == dnf ]] && echo perl-core || echo perl; }
    command -v make >/dev/null || echo make
    command -v file >/dev/null || echo file
    command -v cc >/dev/null || case $pm in
        apt-get) echo gcc libc6-dev ;;
        apk) echo gcc musl-dev ;;
        *) echo gcc ;;
    esac
    return 0
}

say "system packages"
pm=""
for candidate in apt-get dnf apk; do
    command -v "$candidate" >/dev/null && { pm=$candidate; break; }
done
if [[ -z $pm ]]; then
    for tool in musl-gcc perl make file; do
        command -v "$tool" >/dev/null ||
            die "missing $tool, and no apt-get, dnf or apk to install it with"
    done
else
    mapfile -t pkgs < <(missing_packages "$pm" | tr ' ' '\n')
    if ((${#pkgs[@]})); then
        case $pm in
            apt-get) cmd="apt-get update && apt-get install -y ${pkgs[*]}" ;;
            dnf) cmd="dnf install -y ${pkgs[*]}" ;;
            apk) cmd="apk add ${pkgs[*]}" ;;
        esac
        [[ $(id -u) == 0 ]] || die "missing ${pkgs[*]}; install as root with: $cmd"
        echo "installing: $cmd" >&2
        case $pm in
            apt-get)
                export DEBIAN_FRONTEND=noninteractive
                apt-get update -q
                apt-get install -y -q "${pkgs[@]}"
                ;;
            dnf) dnf install -y "${pkgs[@]}" ;;
            apk) apk add "${pkgs[@]}" ;;
        esac
    fi
fi
echo "musl-gcc: $(command -v musl-gcc || echo "the system compiler")," \
    "perl: $(command -v perl), make: $(command -v make)" >&2

say "Rust target $target"
if ! rustc --print sysroot >/dev/null || ! [[ -d "$(rustc --print sysroot)/lib/rustlib/$target" ]]; then
    command -v rustup >/dev/null ||
        die "the Rust standard library for $target is missing and rustup is not installed"
    rustup target add "$target"
fi
echo "installed" >&2

say "cargo build --profile $profile --target $target --features vendored-openssl"
cargo build --locked --bin dispatchbox --profile "$profile" --target "$target" \
    --features vendored-openssl

say "checks"
[[ -x $bin ]] || die "no binary at $bin"
kind=$(file -b "$bin")
echo "file: $kind" >&2
[[ $kind == *"statically linked"* || $kind == *"static-pie linked"* ]] ||
    die "$bin is not statically linked"
if command -v ldd >/dev/null; then
    # glibc's ldd says "statically linked" or "not a dynamic executable"; a library is "=>".
    if ldd_out=$(ldd "$bin" 2>&1) && [[ $ldd_out == *"=>"* ]]; then
        die "$bin loads shared libraries: $ldd_out"
    fi
    echo "ldd: $(head -n 1 <<<"$ldd_out" | sed 's/^[[:space:]]*//')" >&2
fi
"$bin" --version >&2

say "package"
version=$("$bin" --version | head -n 1 | cut -d' ' -f2)
name="dispatchbox-$version-x86_64-linux-musl"
stage="${CARGO_TARGET_DIR:-target}/dist/$name"
rm -rf "$stage"
mkdir -p "$stage"
cp "$bin" LICENSE NOTICE "$stage/"
mkdir -p "$stage/man" "$stage/completions"
"$bin" generate man >"$stage/man/dispatchbox.1"
"$bin" generate complete-bash >"$stage/completions/dispatchbox.bash"
"$bin" generate complete-zsh >"$stage/completions/_dispatchbox"
"$bin" generate complete-fish >"$stage/completions/dispatchbox.fish"
for f in man/dispatchbox.1 completions/dispatchbox.bash completions/_dispatchbox \
    completions/dispatchbox.fish; do
    [[ -s $stage/$f ]] || die "$f is empty"
done
tar -C "$(dirname "$stage")" -czf "$stage.tar.gz" "$name"

size=$(stat -c %s "$bin")
echo "binary:  $bin"
echo "size:    $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }'))"
echo "sha256:  $(sha256sum "$bin" | cut -d' ' -f1)"
echo "tarball: $stage.tar.gz (the binary, LICENSE, NOTICE, the man page, completions)"
