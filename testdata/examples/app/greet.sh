#!/bin/sh
cat /etc/banner.txt
echo "$GREETING"
