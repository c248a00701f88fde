FROM alpine
COPY --chmown=1000 a b
