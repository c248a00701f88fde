# The build after a failure, in the same store: shares the first step with Dockerfile.
ARG BASE
FROM ${BASE}
RUN echo "a step that works" > /ok
RUN echo "after the failure" > /after
