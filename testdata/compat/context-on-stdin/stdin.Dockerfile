ARG BASE
FROM ${BASE}
RUN echo made > /made.txt
