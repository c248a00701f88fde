FROM scratch
COPY from-context.txt /
