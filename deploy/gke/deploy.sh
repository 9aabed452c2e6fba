#!/usr/bin/env bash
# deploy/gke/deploy.sh: hello-world on Google Kubernetes Engine, from nothing to a checked URL.
#
# The seed's three steps (create the cluster, get credentials, apply), completed with the ones it
# skipped: an Artifact Registry repository, the image built for amd64 and arm64, pushed as one
# index and pinned by its digest (Redis is mirrored next to it), the rollout and the external IP waited for, and `hello-world check`
# proving that three replicas answer through the load balancer.
#
#   deploy/gke/deploy.sh --project=MY_PROJECT            deploy (idempotent: re-run to update)
#   deploy/gke/deploy.sh --project=MY_PROJECT --dry-run  print every command, run none
#   deploy/gke/deploy.sh --project=MY_PROJECT --delete   tear everything down
#
# Every value has a flag and an environment variable; see `--help`. No tracked file is modified:
# the image references go into a throw-away overlay under the git-ignored target/ directory.
set -euo pipefail
# A failure inside $(...) stops the script too, not just the substitution.
shopt -s inherit_errexit

# Found with builtins only (no dirname), so a dry run needs nothing but bash.
script="${BASH_SOURCE[0]}"
[[ "$script" == */* ]] || script="./$script"
root="$(cd "${script%/*}/../.." && pwd)"
readonly root
# The image name the gke overlay renders; the throw-away overlay replaces it with the pushed image.
readonly overlay_image="us-central1-docker.pkg.dev/PROJECT_ID/hello-world/hello-world"
readonly namespace="hello-world"
# The Secret the Deployment reads the admin token from (deploy/k8s/base/deployment.yaml).
readonly admin_secret="hello-world-admin-token"
# Bounded waits: 60 polls 5 s apart for the load balancer's IP, 5 minutes per rollout.
readonly ip_polls=60
readonly ip_poll_interval=5
readonly rollout_timeout=300s

project="${HELLO_GKE_PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}"
zone="${HELLO_GKE_ZONE:-us-central1-c}"
region="${HELLO_GKE_REGION:-}"
cluster="${HELLO_GKE_CLUSTER:-hello-world}"
nodes="${HELLO_GKE_NODES:-3}"
machine_type="${HELLO_GKE_MACHINE_TYPE:-n1-standard-1}"
repository="${HELLO_GKE_REPOSITORY:-hello-world}"
tag="${HELLO_GKE_TAG:-}"
redis_image="${HELLO_GKE_REDIS_IMAGE:-redis:7.4-bookworm}"
mode=deploy
dry_run=0
# The throw-away overlay's directory, removed on exit.
workdir=""
trap '[[ -z "$workdir" ]] || rm -rf "$workdir"' EXIT

usage() {
    cat <<EOF
usage: deploy/gke/deploy.sh [options]

Deploys hello-world to a GKE cluster (created if missing) and checks it through its load balancer.

options (flag=value or flag value; environment variable in brackets):
  --project=ID          Google Cloud project [HELLO_GKE_PROJECT, CLOUDSDK_CORE_PROJECT,
                        else gcloud's configured project]
  --zone=ZONE           cluster zone [HELLO_GKE_ZONE] (default us-central1-c)
  --region=REGION       Artifact Registry location [HELLO_GKE_REGION] (default: the zone's region)
  --cluster=NAME        cluster name [HELLO_GKE_CLUSTER] (default hello-world)
  --nodes=N             node count [HELLO_GKE_NODES] (default 3)
  --machine-type=TYPE   node machine type [HELLO_GKE_MACHINE_TYPE] (default n1-standard-1)
  --repository=NAME     Artifact Registry repository [HELLO_GKE_REPOSITORY] (default hello-world)
  --tag=TAG             image tag [HELLO_GKE_TAG] (default: the current git commit)
  --redis-image=IMAGE   Redis image mirrored into the repository [HELLO_GKE_REDIS_IMAGE]
                        (default redis:7.4-bookworm)
  --dry-run             print every command without running any, then exit 0
  --delete              delete the application, the cluster and the repository
  -h, --help            show this help

needs: gcloud, kubectl, docker, cargo, git (none of them for --dry-run)
EOF
}

die() {
    printf 'deploy.sh: %s\n' "$*" >&2
    exit 1
}

usage_error() {
    printf 'deploy.sh: %s (see --help)\n' "$*" >&2
    exit 2
}

# Commands are printed on fd 3, the script's stdout, so those run inside $(...) print in order too.
exec 3>&1

# Prints a command as it would be typed: words that need no quoting stay bare, so the seed's
# commands read exactly as the seed wrote them.
show() {
    local word out=""
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            out+="$word "
        else
            out+="'${word//\'/\'\\\'\'}' "
        fi
    done
    printf '+ %s\n' "${out% }" >&3
}

# Runs a command after printing it; in a dry run, only prints it.
run() {
    show "$@"
    if ((dry_run)); then
        return 0
    fi
    "$@"
}

# Runs a command that asks whether something exists, quietly; a dry run assumes it does not.
exists() {
    show "$@"
    if ((dry_run)); then
        return 1
    fi
    "$@" >/dev/null 2>&1
}

# Runs a command whose output the next steps need and prints that output; a dry run prints the
# stand-in given as the first argument instead.
capture() {
    local stand_in="$1"
    shift
    show "$@"
    if ((dry_run)); then
        printf '%s\n' "$stand_in"
        return 0
    fi
    "$@"
}

step() {
    printf '\n==> %s\n' "$*"
}

require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 ||
            die "\`$tool\` is not installed or not on PATH (needed for this step; --dry-run needs nothing)"
    done
}

parse_args() {
    while (($#)); do
        local arg="$1" name value
        shift
        case "$arg" in
            -h | --help)
                usage
                exit 0
                ;;
            --dry-run) dry_run=1 ;;
            --delete) mode=delete ;;
            --*=*)
                name="${arg%%=*}"
                value="${arg#*=}"
                set_option "$name" "$value"
                ;;
            --*)
                set_option "$arg" "${1-}"
                shift
                ;;
            *) usage_error "unexpected argument: $arg" ;;
        esac
    done
}

set_option() {
    local name="$1" value="$2" variable
    case "$name" in
        --project) variable=project ;;
        --zone) variable=zone ;;
        --region) variable=region ;;
        --cluster) variable=cluster ;;
        --nodes) variable=nodes ;;
        --machine-type) variable=machine_type ;;
        --repository) variable=repository ;;
        --tag) variable=tag ;;
        --redis-image) variable=redis_image ;;
        *) usage_error "unknown option: $name" ;;
    esac
    [[ -n "$value" ]] || usage_error "$name needs a value"
    printf -v "$variable" '%s' "$value"
}

resolve_settings() {
    if [[ -z "$project" ]] && ((!dry_run)) && command -v gcloud >/dev/null 2>&1; then
        project="$(gcloud config get-value project 2>/dev/null || true)"
    fi
    [[ -n "$project" ]] ||
        usage_error "no Google Cloud project: pass --project=ID or set HELLO_GKE_PROJECT"
    [[ "$project" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
        usage_error "not a Google Cloud project id: $project"
    [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || usage_error "--nodes must be a positive number: $nodes"
    [[ "$zone" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || usage_error "not a zone: $zone"
    # us-central1-c → us-central1: the registry lives in the cluster's region, so pulls stay local.
    region="${region:-${zone%-*}}"
    if [[ -z "$tag" ]]; then
        # Reading the commit is the one thing a dry run does: it changes nothing.
        tag="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null)" ||
            usage_error "not in a git checkout: pass --tag=TAG"
    fi
    [[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || usage_error "not an image tag: $tag"
    registry="${region}-docker.pkg.dev"
    image="${registry}/${project}/${repository}/hello-world"
    redis_mirror="${registry}/${project}/${repository}/redis"
}

# gcloud reads the project from this variable, so every gcloud command below is written exactly
# as the seed wrote it, with no --project on each.
use_project() {
    show export "CLOUDSDK_CORE_PROJECT=$project"
    export CLOUDSDK_CORE_PROJECT="$project"
}

# Pushes a local image under a registry name and prints its digest (the tag may move; the digest
# names exactly what was pushed).
push_and_pin() {
    local local_image="$1" remote="$2"
    run docker tag "$local_image" "$remote" >&3
    run docker push "$remote" >&3
    capture "sha256:PUSHED_IMAGE_DIGEST" \
        gcloud artifacts docker images describe "$remote" "--format=value(image_summary.digest)"
}

# Creates the admin token Secret from 32 random bytes. The token goes through a file in the
# throw-away overlay (0700, removed on exit), never through a command line or the printed commands.
create_admin_secret() {
    local dir="$1"
    printf '+ od -An -N32 -tx1 /dev/urandom | tr -d %s > %s/admin-token\n' "' \\n'" "$dir" >&3
    if ((!dry_run)); then
        (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$dir/admin-token")
    fi
    run kubectl "--namespace=$namespace" create secret generic "$admin_secret" \
        "--from-file=token=$dir/admin-token"
    printf "read it with: kubectl --namespace=%s get secret %s --output=jsonpath='{.data.token}' | base64 --decode\n" \
        "$namespace" "$admin_secret"
}

deploy() {
    ((dry_run)) || require_tools gcloud kubectl docker cargo git
    use_project

    step "APIs"
    run gcloud services enable container.googleapis.com artifactregistry.googleapis.com

    step "cluster $cluster ($nodes × $machine_type in $zone)"
    if exists gcloud container clusters describe "$cluster" "--zone=$zone"; then
        printf 'cluster %s exists\n' "$cluster"
    else
        # The seed's command; Dataplane V2 added so the NetworkPolicies are enforced, not just stored.
        run gcloud container clusters create "$cluster" "--num-nodes=$nodes" "--zone=$zone" \
            "--machine-type=$machine_type" --enable-dataplane-v2
    fi
    run gcloud container clusters get-credentials "$cluster" "--zone=$zone"

    step "Artifact Registry repository $repository in $region"
    if exists gcloud artifacts repositories describe "$repository" "--location=$region"; then
        printf 'repository %s exists\n' "$repository"
    else
        run gcloud artifacts repositories create "$repository" "--location=$region" \
            --repository-format=docker "--description=hello-world images"
    fi
    run gcloud auth configure-docker "$registry" --quiet

    step "image index $image:$tag (linux/amd64 and linux/arm64)"
    # Both platforms' images, each with its SBOM beside it (target/image/), then the index over
    # them pushed and read back; the Deployment is pinned to the index's digest, so every node
    # pulls exactly what was pushed, for its own architecture (x86-64 or Arm, e.g. Tau T2A).
    local digest redis_digest
    digest="$(
        cd "$root"
        run cargo xtask image >&3
        capture "sha256:PUSHED_INDEX_DIGEST" cargo xtask image --push "$image" --tag "$tag"
    )"
    step "Redis mirrored as $redis_mirror"
    # GKE nodes are x86-64 whatever machine deploys from.
    run docker pull --platform=linux/amd64 "$redis_image"
    redis_digest="$(push_and_pin "$redis_image" "$redis_mirror:${redis_image##*:}")"

    step "apply"
    # Kustomize takes only relative resource paths, so the throw-away overlay lives under the
    # git-ignored target/ directory, two levels below the root, and is removed on exit.
    local overlay
    run mkdir -p "$root/target"
    overlay="$(capture "$root/target/gke-overlay.XXXXXXXXXX" \
        mktemp -d "$root/target/gke-overlay.XXXXXXXXXX")"
    ((dry_run)) || workdir="$overlay"
    # printf, not cat: a dry run needs nothing but bash.
    local kustomization
    kustomization="$(printf '%s\n' \
        "# Throw-away overlay written by deploy/gke/deploy.sh: the gke overlay with the pushed images." \
        "apiVersion: kustomize.config.k8s.io/v1beta1" \
        "kind: Kustomization" \
        "resources:" \
        "  - ../../deploy/k8s/overlays/gke" \
        "images:" \
        "  - name: $overlay_image" \
        "    newName: $image" \
        "    digest: $digest" \
        "  - name: redis" \
        "    newName: $redis_mirror" \
        "    digest: $redis_digest")"
    printf '+ cat > %s/kustomization.yaml <<EOF\n%s\nEOF\n' "$overlay" "$kustomization" >&3
    ((dry_run)) || printf '%s\n' "$kustomization" >"$overlay/kustomization.yaml"
    run kubectl apply -k "$overlay"

    step "admin token (Secret $admin_secret)"
    # The pods wait for this Secret; a re-run keeps the token it made the first time.
    if exists kubectl "--namespace=$namespace" get secret "$admin_secret"; then
        printf 'secret %s exists\n' "$admin_secret"
    else
        create_admin_secret "$overlay"
    fi
    run kubectl "--namespace=$namespace" rollout status statefulset/redis "--timeout=$rollout_timeout"
    run kubectl "--namespace=$namespace" rollout status deployment/hello-world \
        "--timeout=$rollout_timeout"

    step "external IP (polled every ${ip_poll_interval}s, at most $ip_polls times)"
    local ip="" poll
    for ((poll = 1; poll <= ip_polls; poll++)); do
        ip="$(capture EXTERNAL_IP kubectl "--namespace=$namespace" get service hello-world \
            "--output=jsonpath={.status.loadBalancer.ingress[0].ip}")"
        [[ -z "$ip" ]] || break
        sleep "$ip_poll_interval"
    done
    [[ -n "$ip" ]] ||
        die "the load balancer has no external IP after $((ip_polls * ip_poll_interval))s; see: kubectl --namespace=$namespace describe service hello-world"

    step "check: 300 requests, each on a new connection, must reach 3 replicas"
    # The image carries the check client; the check fails (non-zero) on any error or fewer replicas.
    run docker run --rm hello-world:dev check "http://$ip/" --new-connection --expect-replicas=3 \
        --requests=300 --concurrency=8

    printf '\nhello-world is serving at http://%s/\n' "$ip"
    printf 'delete it all with: deploy/gke/deploy.sh --project=%s --delete\n' "$project"
}

delete() {
    ((dry_run)) || require_tools gcloud kubectl
    use_project

    # A dry run prints the deletions as if everything existed.
    step "application"
    if exists gcloud container clusters describe "$cluster" "--zone=$zone" || ((dry_run)); then
        run gcloud container clusters get-credentials "$cluster" "--zone=$zone"
        # The namespace goes first: deleting it releases the load balancer's forwarding rule and
        # Redis's persistent disk, which deleting the cluster alone would leave behind, billed.
        run kubectl delete namespace "$namespace" --ignore-not-found --wait=true "--timeout=$rollout_timeout"
        step "cluster $cluster"
        run gcloud container clusters delete "$cluster" "--zone=$zone" --quiet
    else
        printf 'no cluster %s in %s\n' "$cluster" "$zone"
    fi

    step "Artifact Registry repository $repository"
    if exists gcloud artifacts repositories describe "$repository" "--location=$region" || ((dry_run)); then
        run gcloud artifacts repositories delete "$repository" "--location=$region" --quiet
    else
        printf 'no repository %s in %s\n' "$repository" "$region"
    fi
}

main() {
    parse_args "$@"
    resolve_settings
    if ((dry_run)); then
        printf '# dry run: every command is printed, none is run\n'
    fi
    case "$mode" in
        deploy) deploy ;;
        delete) delete ;;
        *) die "unknown mode: $mode" ;;
    esac
}

main "$@"
