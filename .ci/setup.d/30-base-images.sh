# Base images for pull/unpack/build tests, made offline by testdata/make-base-images.sh and pushed to the
# registry 20-registry.sh started. Idempotent: images already in the registry are not rebuilt.
FORGE_TEST_REGISTRY=${FORGE_TEST_REGISTRY:-127.0.0.1:5000}
export FORGE_TEST_REGISTRY
bash "$(dirname "${BASH_SOURCE[0]}")/../../testdata/make-base-images.sh"
export FORGE_TEST_BUSYBOX=$FORGE_TEST_REGISTRY/forge-test/busybox:latest
export FORGE_TEST_DEBIAN=$FORGE_TEST_REGISTRY/forge-test/debian:bookworm
